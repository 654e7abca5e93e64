// pgjdbc through the dualwrite proxy: the checks of tests/compat/README.md.
// Run as a single-file program: java -cp /usr/share/java/postgresql.jar Compat.java

import java.io.StringReader;
import java.io.StringWriter;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Properties;

import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class Compat {
    static final String V1_NAME = "Ada Lovelace";
    static final String V1_EMAIL = "Ada.Lovelace@Example.ORG";
    static final List<Object> V2_ROW = List.of("Ada", "Lovelace", "ada.lovelace@example.org");
    static final String UPDATED_NAME = "Grace Hopper";
    static final List<Object> UPDATED_V2 = List.of("Grace", "Hopper");

    static final String HOST = env("DW_HOST");
    static final String PORT = env("DW_PORT");
    static final String DATABASE = env("DW_DATABASE");
    static final String USER = env("DW_USER");
    static final String PASSWORD = env("DW_PASSWORD");
    static final String UPSTREAM_HOST = env("DW_UPSTREAM_HOST");
    static final String UPSTREAM_PORT = env("DW_UPSTREAM_PORT");
    static final String UPSTREAM_USER = env("DW_UPSTREAM_USER");

    static Integer insertedId;

    static String env(String name) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) throw new IllegalStateException(name + " is not set");
        return value;
    }

    static class CheckFailed extends Exception {
        CheckFailed(String why) { super(why); }
    }

    interface Check { void run() throws Exception; }

    static void expect(boolean condition, String why) throws CheckFailed {
        if (!condition) throw new CheckFailed(why);
    }

    static void expectEq(Object actual, Object expected, String what) throws CheckFailed {
        if (!Objects.equals(actual, expected)) throw new CheckFailed(what + ": expected " + expected + ", got " + actual);
    }

    /** A connection through the proxy; `version` (may be null) goes in the URL's `options`, `extra` are URL parameters. */
    static Connection proxy(String version, String extra) throws SQLException {
        StringBuilder url = new StringBuilder("jdbc:postgresql://" + HOST + ":" + PORT + "/" + DATABASE + "?connectTimeout=10");
        if (version != null) {
            url.append("&options=").append(URLEncoder.encode("-c dualwrite.version=" + version, StandardCharsets.UTF_8));
        }
        if (extra != null) url.append('&').append(extra);
        Properties props = new Properties();
        props.setProperty("user", USER);
        props.setProperty("password", PASSWORD);
        return DriverManager.getConnection(url.toString(), props);
    }

    static Connection proxy() throws SQLException { return proxy(null, null); }

    static Connection upstream() throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", UPSTREAM_USER);
        return DriverManager.getConnection("jdbc:postgresql://" + UPSTREAM_HOST + ":" + UPSTREAM_PORT + "/" + DATABASE, props);
    }

    /** The first row of `sql` (with `args`) as a list, or null when there is none. */
    static List<Object> row(Connection conn, String sql, Object... args) throws SQLException {
        try (PreparedStatement st = conn.prepareStatement(sql)) {
            for (int i = 0; i < args.length; i++) st.setObject(i + 1, args[i]);
            try (ResultSet rs = st.executeQuery()) {
                if (!rs.next()) return null;
                List<Object> values = new ArrayList<>();
                for (int i = 1; i <= rs.getMetaData().getColumnCount(); i++) values.add(rs.getObject(i));
                return values;
            }
        }
    }

    static List<Object> upstreamRow(String sql, Object... args) throws SQLException {
        try (Connection up = upstream()) { return row(up, sql, args); }
    }

    static int id() throws CheckFailed {
        expect(insertedId != null, "no row: dual_write_insert failed");
        return insertedId;
    }

    public static void main(String[] args) {
        Map<String, Check> checks = new LinkedHashMap<>();
        checks.put("connect_scram", () -> {
            try (Connection c = proxy()) { expectEq(row(c, "SELECT current_user"), List.of(USER), "current_user"); }
        });
        checks.put("simple_query", () -> {
            // preferQueryMode=simple: pgjdbc sends Query messages instead of Parse/Bind/Execute.
            try (Connection c = proxy(null, "preferQueryMode=simple"); Statement st = c.createStatement()) {
                expect(st.execute("SELECT 1; SELECT 'two'"), "no result set");
                try (ResultSet rs = st.getResultSet()) { rs.next(); expectEq(rs.getInt(1), 1, "first result"); }
                expect(st.getMoreResults(), "no second result set");
                try (ResultSet rs = st.getResultSet()) { rs.next(); expectEq(rs.getString(1), "two", "second result"); }
            }
        });
        checks.put("prepared_query", () -> {
            // prepareThreshold=1: a named server-side statement from the first execution on.
            try (Connection c = proxy(null, "prepareThreshold=1");
                 PreparedStatement st = c.prepareStatement("SELECT ?::int + 1, ?::text")) {
                for (int n = 0; n < 3; n++) {
                    st.setInt(1, n);
                    st.setString(2, "x");
                    try (ResultSet rs = st.executeQuery()) {
                        rs.next();
                        expectEq(List.of(rs.getInt(1), rs.getString(2)), List.of(n + 1, "x"), "prepared result");
                    }
                }
            }
        });
        checks.put("transaction_commit", () -> {
            try (Connection c = proxy(); PreparedStatement st = c.prepareStatement("INSERT INTO notes (id, body) VALUES (?, ?)")) {
                c.setAutoCommit(false);
                st.setInt(1, 1);
                st.setString(2, "kept");
                st.executeUpdate();
                c.commit();
            }
            expectEq(upstreamRow("SELECT body FROM notes WHERE id = 1"), List.of("kept"), "committed row");
        });
        checks.put("transaction_rollback", () -> {
            try (Connection c = proxy(); PreparedStatement st = c.prepareStatement("INSERT INTO notes (id, body) VALUES (?, ?)")) {
                c.setAutoCommit(false);
                st.setInt(1, 2);
                st.setString(2, "dropped");
                st.executeUpdate();
                c.rollback();
            }
            expectEq(upstreamRow("SELECT count(*)::int FROM notes WHERE id = 2"), List.of(0), "rolled-back rows");
        });
        checks.put("dual_write_insert", () -> {
            try (Connection c = proxy()) {
                insertedId = (Integer) row(c, "INSERT INTO users (name, email) VALUES (?, ?) RETURNING id", V1_NAME, V1_EMAIL).get(0);
            }
            expectEq(upstreamRow("SELECT name, email FROM users WHERE id = ?", insertedId), List.of(V1_NAME, V1_EMAIL), "row in users");
            expectEq(upstreamRow("SELECT first_name, last_name, email FROM users_v2 WHERE id = ?", insertedId), V2_ROW, "row in users_v2");
        });
        checks.put("dual_write_update", () -> {
            int id = id();
            try (Connection c = proxy(null, "prepareThreshold=1");
                 PreparedStatement st = c.prepareStatement("UPDATE users SET name = ? WHERE id = ?")) {
                try {
                    st.setString(1, UPDATED_NAME);
                    st.setInt(2, id);
                    expectEq(st.executeUpdate(), 1, "rows updated");
                    expectEq(upstreamRow("SELECT first_name, last_name FROM users_v2 WHERE id = ?", id), UPDATED_V2, "users_v2 after the update");
                } finally {
                    st.setString(1, V1_NAME);
                    st.executeUpdate();
                }
            }
        });
        checks.put("dual_write_rollback", () -> {
            int id;
            try (Connection c = proxy()) {
                c.setAutoCommit(false);
                id = (Integer) row(c, "INSERT INTO users (name, email) VALUES (?, ?) RETURNING id", "Rolled Back", "r@b").get(0);
                c.rollback();
            }
            expectEq(upstreamRow("SELECT (SELECT count(*)::int FROM users WHERE id = ?), (SELECT count(*)::int FROM users_v2 WHERE id = ?)", id, id),
                List.of(0, 0), "rows in users, users_v2");
        });
        checks.put("read_v1", () -> {
            int id = id();
            try (Connection c = proxy("v1", null)) {
                expectEq(row(c, "SELECT name, email FROM users WHERE id = ?", id), List.of(V1_NAME, V1_EMAIL), "v1 row");
            }
        });
        checks.put("read_v2", () -> {
            int id = id();
            try (Connection c = proxy("v2", null)) {
                expectEq(row(c, "SELECT first_name, last_name, email FROM users WHERE id = ?", id), V2_ROW, "v2 row");
            }
        });
        checks.put("show_version", () -> {
            try (Connection c = proxy("v2", null)) { expectEq(row(c, "SHOW dualwrite.version"), List.of("v2"), "dualwrite.version"); }
        });
        checks.put("copy_in", () -> {
            StringBuilder data = new StringBuilder();
            for (int n = 100; n < 110; n++) data.append(n).append("\tcopied ").append(n).append('\n');
            try (Connection c = proxy()) {
                CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
                expectEq(copy.copyIn("COPY notes (id, body) FROM STDIN", new StringReader(data.toString())), 10L, "rows copied");
            }
            expectEq(upstreamRow("SELECT count(*)::int FROM notes WHERE id >= 100"), List.of(10), "copied rows");
        });
        checks.put("copy_out", () -> {
            StringWriter out = new StringWriter();
            try (Connection c = proxy()) {
                CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
                copy.copyOut("COPY (SELECT id, body FROM notes WHERE id >= 100 ORDER BY id) TO STDOUT", out);
            }
            String[] lines = out.toString().split("\n");
            expectEq(lines.length, 10, "rows copied out");
            expectEq(lines[0], "100\tcopied 100", "first row");
        });
        checks.put("copy_into_migrated", () -> {
            // CopyManager sends COPY FROM STDIN as a simple Query: the proxy dual-writes it.
            try (Connection c = proxy()) {
                CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
                long rows = copy.copyIn("COPY users (name, email) FROM STDIN", new StringReader("Copy Person\tCOPY@Example.org\n"));
                expectEq(rows, 1L, "rows copied");
            }
            expectEq(upstreamRow("SELECT (SELECT count(*)::int FROM users WHERE email = 'COPY@Example.org'), "
                    + "(SELECT count(*)::int FROM users_v2 WHERE first_name = 'Copy' AND last_name = 'Person' AND email = 'copy@example.org')"),
                List.of(1, 1), "rows in users and users_v2");
        });
        checks.put("cancel", () -> {
            try (Connection c = proxy(); Statement st = c.createStatement()) {
                Thread canceller = new Thread(() -> {
                    try { Thread.sleep(500); st.cancel(); } catch (Exception ignored) { }
                });
                long started = System.nanoTime();
                canceller.start();
                try {
                    st.execute("SELECT pg_sleep(30)");
                    throw new CheckFailed("pg_sleep(30) was not cancelled");
                } catch (SQLException e) {
                    expectEq(e.getSQLState(), "57014", "SQLSTATE");
                } finally {
                    canceller.join();
                }
                expect(System.nanoTime() - started < 20_000_000_000L, "cancel took too long");
                expectEq(row(c, "SELECT 1"), List.of(1), "query after the cancel");
            }
        });

        int passed = 0, failed = 0;
        for (Map.Entry<String, Check> check : checks.entrySet()) {
            try {
                check.getValue().run();
                passed++;
                System.out.println("ok " + check.getKey());
            } catch (Exception e) {
                failed++;
                String why = e instanceof CheckFailed ? e.getMessage() : e.getClass().getSimpleName() + ": " + e.getMessage();
                System.out.println("FAIL " + check.getKey() + ": " + String.join(" ", String.valueOf(why).trim().split("\\s+")));
            }
        }
        System.out.println("done: " + passed + " ok, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
