"""What the tests share: the site (`Env`), the in-process CLI runner, the session's
files server, the daemon as a process, `wait_until`, the engine on one file.

tests/conftest.py holds only fixtures over these; `tests.conftest` and
`tests.daemon_helpers` re-export the names older tests import from there.
"""

from tests.support.cli import CliResult, CliTimeout, run_cli
from tests.support.daemon import DaemonProc, NotifySocket
from tests.support.engine import SleepRecorder, fetch
from tests.support.env import OWN_ENV, REPO, Env, make_env, sha
from tests.support.files import SharedFiles
from tests.support.wait import wait_until

__all__ = ["OWN_ENV", "REPO", "CliResult", "CliTimeout", "DaemonProc", "Env", "NotifySocket",
           "SharedFiles", "SleepRecorder", "fetch", "make_env", "run_cli", "sha", "wait_until"]
