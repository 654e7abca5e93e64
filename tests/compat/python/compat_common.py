"""Shared by the Python driver programs: the environment contract (tests/compat/README.md), the expected
rows of the migration checks and the `ok name` / `FAIL name: why` reporting."""

import os
import sys
import traceback
from urllib.parse import quote

PROXY_URL = os.environ["DW_PROXY_URL"]
UPSTREAM_URL = os.environ["DW_UPSTREAM_URL"]
HOST = os.environ["DW_HOST"]
PORT = int(os.environ["DW_PORT"])
DATABASE = os.environ["DW_DATABASE"]
USER = os.environ["DW_USER"]
PASSWORD = os.environ["DW_PASSWORD"]

# A v1 write and what the forward mapping of users_split_name makes of it in users_v2.
V1_NAME, V1_EMAIL = "Ada Lovelace", "Ada.Lovelace@Example.ORG"
V2_ROW = ("Ada", "Lovelace", "ada.lovelace@example.org")
UPDATED_NAME = "Grace Hopper"
UPDATED_V2 = ("Grace", "Hopper")


def with_version(url, version):
    """The URL with `options=-c dualwrite.version=<version>` appended."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote('-c dualwrite.version=' + version, safe='')}"


class CheckFailed(Exception):
    pass


def expect(condition, why):
    if not condition:
        raise CheckFailed(why)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


def _one_line(text):
    return " ".join(str(text).split())


class Checks:
    """Runs every check even after a failure; `finish` exits 1 if any failed."""

    def __init__(self):
        self.failed = 0
        self.passed = 0

    def _report(self, name, error):
        if error is None:
            self.passed += 1
            print(f"ok {name}", flush=True)
        else:
            self.failed += 1
            if os.environ.get("DW_COMPAT_TRACE"):
                traceback.print_exception(error, file=sys.stderr)
            why = error if isinstance(error, CheckFailed) else f"{type(error).__name__}: {error}"
            print(f"FAIL {name}: {_one_line(why)}", flush=True)

    def run(self, name, check):
        try:
            check()
        except Exception as error:  # noqa: BLE001 - every failure is reported, none stops the program
            self._report(name, error)
        else:
            self._report(name, None)

    async def run_async(self, name, check):
        try:
            await check()
        except Exception as error:  # noqa: BLE001
            self._report(name, error)
        else:
            self._report(name, None)

    def finish(self):
        print(f"done: {self.passed} ok, {self.failed} failed", flush=True)
        sys.exit(1 if self.failed else 0)
