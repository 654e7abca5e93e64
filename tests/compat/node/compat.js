// node-postgres (npm `pg`) through the dualwrite proxy: the checks of tests/compat/README.md.
// `pg` has no COPY API of its own (that is the separate pg-copy-streams package), so COPY is not checked.
'use strict'

const pg = require('pg')

const env = (name) => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set`)
  return value
}
const PROXY_URL = env('DW_PROXY_URL')
const UPSTREAM_URL = env('DW_UPSTREAM_URL')
const USER = env('DW_USER')

const V1_NAME = 'Ada Lovelace'
const V1_EMAIL = 'Ada.Lovelace@Example.ORG'
const V2_ROW = ['Ada', 'Lovelace', 'ada.lovelace@example.org']
const UPDATED_NAME = 'Grace Hopper'
const UPDATED_V2 = ['Grace', 'Hopper']

const withVersion = (url, version) =>
  `${url}${url.includes('?') ? '&' : '?'}options=${encodeURIComponent(`-c dualwrite.version=${version}`)}`

class CheckFailed extends Error {}
const expect = (condition, why) => {
  if (!condition) throw new CheckFailed(why)
}
const expectEq = (actual, expected, what) => {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new CheckFailed(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`)
  }
}

const state = {}
const insertedId = () => {
  expect(state.id !== undefined, 'no row: dual_write_insert failed')
  return state.id
}

async function withClient(url, work) {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10000 })
  await client.connect()
  try {
    return await work(client)
  } finally {
    await client.end()
  }
}
const proxy = (work, version) => withClient(version ? withVersion(PROXY_URL, version) : PROXY_URL, work)
const upstreamRow = (text, values) =>
  withClient(UPSTREAM_URL, async (c) => (await c.query({ text, values, rowMode: 'array' })).rows[0])

const checks = {
  async connect_scram() {
    await proxy(async (c) => expectEq((await c.query('SELECT current_user AS u')).rows[0].u, USER, 'current_user'))
  },

  async simple_query() {
    // No values: a simple Query message, which may carry several statements (one result each).
    await proxy(async (c) => {
      const results = await c.query('SELECT 1 AS a; SELECT 2 AS b')
      expectEq(results.map((r) => r.rows[0]), [{ a: 1 }, { b: 2 }], 'results')
    })
  },

  async prepared_query() {
    await proxy(async (c) => {
      for (let n = 0; n < 3; n++) {
        // A named statement: Parse once, then Bind/Execute on every use.
        const r = await c.query({ name: 'plus_one', text: 'SELECT $1::int + 1 AS n, $2::text AS s', values: [n, 'x'] })
        expectEq(r.rows[0], { n: n + 1, s: 'x' }, 'prepared result')
      }
    })
  },

  async transaction_commit() {
    await proxy(async (c) => {
      await c.query('BEGIN')
      await c.query('INSERT INTO notes (id, body) VALUES ($1, $2)', [1, 'kept'])
      await c.query('COMMIT')
    })
    expectEq(await upstreamRow('SELECT body FROM notes WHERE id = 1'), ['kept'], 'committed row')
  },

  async transaction_rollback() {
    await proxy(async (c) => {
      await c.query('BEGIN')
      await c.query('INSERT INTO notes (id, body) VALUES ($1, $2)', [2, 'dropped'])
      await c.query('ROLLBACK')
    })
    expectEq(await upstreamRow('SELECT count(*)::int FROM notes WHERE id = 2'), [0], 'rolled-back rows')
  },

  async dual_write_insert() {
    const id = await proxy(async (c) =>
      (await c.query('INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id', [V1_NAME, V1_EMAIL])).rows[0].id)
    state.id = id
    expectEq(await upstreamRow('SELECT name, email FROM users WHERE id = $1', [id]), [V1_NAME, V1_EMAIL], 'row in users')
    expectEq(
      await upstreamRow('SELECT first_name, last_name, email FROM users_v2 WHERE id = $1', [id]),
      V2_ROW,
      'row in users_v2'
    )
  },

  async dual_write_update() {
    const id = insertedId()
    await proxy(async (c) => {
      try {
        const r = await c.query('UPDATE users SET name = $1 WHERE id = $2', [UPDATED_NAME, id])
        expectEq([r.command, r.rowCount], ['UPDATE', 1], 'command and row count')
        expectEq(
          await upstreamRow('SELECT first_name, last_name FROM users_v2 WHERE id = $1', [id]),
          UPDATED_V2,
          'users_v2 after the update'
        )
      } finally {
        await c.query('UPDATE users SET name = $1 WHERE id = $2', [V1_NAME, id])
      }
    })
  },

  async dual_write_rollback() {
    const id = await proxy(async (c) => {
      await c.query('BEGIN')
      const r = await c.query('INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id', ['Rolled Back', 'r@b'])
      await c.query('ROLLBACK')
      return r.rows[0].id
    })
    expectEq(
      await upstreamRow(
        'SELECT (SELECT count(*)::int FROM users WHERE id = $1), (SELECT count(*)::int FROM users_v2 WHERE id = $1)',
        [id]
      ),
      [0, 0],
      'rows in users, users_v2'
    )
  },

  async read_v1() {
    const id = insertedId()
    await proxy(async (c) => {
      const r = await c.query({ text: 'SELECT name, email FROM users WHERE id = $1', values: [id], rowMode: 'array' })
      expectEq(r.rows[0], [V1_NAME, V1_EMAIL], 'v1 row')
    }, 'v1')
  },

  async read_v2() {
    const id = insertedId()
    await proxy(async (c) => {
      const r = await c.query({
        text: 'SELECT first_name, last_name, email FROM users WHERE id = $1',
        values: [id],
        rowMode: 'array',
      })
      expectEq(r.rows[0], V2_ROW, 'v2 row')
    }, 'v2')
  },

  async show_version() {
    await proxy(async (c) => {
      expectEq((await c.query('SHOW dualwrite.version')).rows[0]['dualwrite.version'], 'v2', 'dualwrite.version')
    }, 'v2')
  },

  async cancel() {
    await proxy(async (c) => {
      const started = Date.now()
      const query = new pg.Query('SELECT pg_sleep(30)')
      const outcome = new Promise((resolve) => {
        query.on('error', (error) => resolve(error))
        query.on('end', () => resolve(null))
      })
      c.query(query)
      await new Promise((resolve) => setTimeout(resolve, 500))
      // pg's cancel: a second Client opens a connection and sends CancelRequest with c's backend key.
      new pg.Client({ connectionString: PROXY_URL }).cancel(c, query)
      const error = await outcome
      expect(error, 'pg_sleep(30) was not cancelled')
      expectEq(error.code, '57014', 'SQLSTATE')
      expect(Date.now() - started < 20000, 'cancel took too long')
      expectEq((await c.query('SELECT 1 AS one')).rows[0].one, 1, 'query after the cancel')
    })
  },
}

async function main() {
  let passed = 0
  let failed = 0
  for (const [name, check] of Object.entries(checks)) {
    try {
      await check()
      passed++
      console.log(`ok ${name}`)
    } catch (error) {
      failed++
      const why = error instanceof CheckFailed ? error.message : `${error.name}: ${error.message}`
      console.log(`FAIL ${name}: ${why.split(/\s+/).join(' ')}`)
    }
  }
  console.log(`done: ${passed} ok, ${failed} failed`)
  process.exitCode = failed ? 1 : 0
}

main()
