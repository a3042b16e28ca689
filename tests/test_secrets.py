"""Secrets in a file_id (a URL's userinfo, a presigned query) never leave the process.

The manifest keeps the real id; every channel that shows, logs or mirrors one (CLI
stdout and stderr, log lines, the Supabase mirror, receipts and error files) carries
its display form. Secrets here are 12+ random letters and digits with a distinctive
start, so `secret in output` means the secret leaked and nothing else.
"""

from __future__ import annotations

import io
import json
import socket
import string
import uuid

import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prefetchd import log as logsetup
from prefetchd.mirror import payload
from prefetchd.redact import MARK, RedactingWriter, display_id, redact_text, redact_value
from tests.daemon_helpers import DaemonProc, wait_until
from tests.test_supabase import SERVICE_KEY, db, pg_admin, schema, supa  # noqa: F401

SIGNED_KEYS = ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig", "token",
               "X-Goog-Signature", "access_token", "se", "sp"]

# The "zq" start keeps a shrunk secret ("zq0000000000") from matching a hash or a port.
secret_text = st.text(string.ascii_letters + string.digits, min_size=10, max_size=22).map(
    lambda t: "zq" + t)
hosts = st.sampled_from(["example.com", "127.0.0.1", "127.0.0.1:8443", "[::1]:9000",
                         "files.example.org", "s3.eu-west-1.amazonaws.com"])
paths = st.lists(st.text(string.ascii_lowercase + string.digits + "-._", min_size=1,
                         max_size=8), max_size=3).map(lambda p: "".join("/" + c for c in p))


@st.composite
def secret_urls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A URL with a password, a user name and/or signed query values; and those secrets."""
    scheme = draw(st.sampled_from(["http", "https", "HTTPS", "s3", "gs"]))
    user, password = draw(secret_text), draw(secret_text)
    userinfo = draw(st.sampled_from(["", f"{user}@", f"{user}:{password}@"]))
    query = []
    for _ in range(draw(st.integers(0 if userinfo else 1, 4))):
        key = draw(st.sampled_from(SIGNED_KEYS))
        value = draw(secret_text)
        query.append(draw(st.sampled_from([f"{key}={value}", value])))
    fragment = draw(st.sampled_from(["", f"#{draw(secret_text)}"]))
    url = (f"{scheme}://{userinfo}{draw(hosts)}{draw(paths)}"
           + ("?" + draw(st.sampled_from(["&", ";"])).join(query) if query else "") + fragment)
    secrets = ([user] if userinfo else []) + ([password] if ":" in userinfo else [])
    secrets += [q.partition("=")[2] or q for q in query] + ([fragment[1:]] if fragment else [])
    return url, secrets


def assert_clean(text: str, secrets: list[str]) -> None:
    for s in secrets:
        assert s not in text, f"secret {s!r} leaked in {text!r}"


CONTEXTS = ["{}", "prefetchd: {}: connection refused", "entry 3 ({!r}): bad", "({})",
            "'{}'", "see {}.", "[{}], [{}]", "{}\n{}", "error={}", "x{}y"]


@settings(max_examples=300)
@given(secret_urls(), st.sampled_from(CONTEXTS))
@example(("https://alice:Pw0rdSecretXYZ@h/x?X-Amz-Signature=SigSecretABCDEF#FragSecret123",
          ["alice", "Pw0rdSecretXYZ", "SigSecretABCDEF", "FragSecret123"]), "{}")
def test_display_id_and_redact_text_hide_every_secret(case, context):
    url, secrets = case
    shown = display_id(url)
    assert_clean(shown, secrets)
    assert display_id(shown) == shown  # a display form is its own display form
    assert_clean(redact_text(context.format(url, url)), secrets)
    assert_clean(redact_text(json.dumps({"file_id": url, "error": f"{url}: 404"})), secrets)
    assert_clean(redact_text(repr([url, url])), secrets)
    assert_clean(json.dumps(redact_value({"file_id": url, "e": [f"{url} x", {"u": url}]})),
                 secrets)


def test_display_form_shape():
    url = ("https://AKIAUSER:pw@bucket.s3.amazonaws.com/a/b.bin"
           "?X-Amz-Credential=c&X-Amz-Signature=s&x-id=GetObject#f")
    assert display_id(url) == (f"https://***@bucket.s3.amazonaws.com/a/b.bin?X-Amz-Credential="
                               f"{MARK}&X-Amz-Signature={MARK}&x-id={MARK}")
    assert redact_text(f"prefetchd: {url}: connection refused") == (
        f"prefetchd: {display_id(url)}: connection refused")
    # A cut URL (a message truncated its id before the `@`) shows nothing after the scheme.
    assert display_id("https://user:passw") == "https://***"


@given(st.text().filter(lambda t: "://" not in t))
def test_ids_that_are_not_urls_are_unchanged(file_id):
    assert display_id(file_id) == file_id
    assert redact_text(file_id) == file_id


@given(st.sampled_from(["http", "https", "s3"]), hosts, paths)
def test_urls_without_secrets_are_unchanged(scheme, host, path):
    """The mirror sends these as they are, so provider_file_uploads rows still match."""
    url = f"{scheme}://{host}{path}"
    assert display_id(url) == url
    assert redact_text(f"{url}: 404") == f"{url}: 404"


@settings(max_examples=200)
@given(secret_urls(), st.lists(st.integers(0, 400), max_size=6), st.booleans())
def test_writer_never_leaks_a_url_written_in_pieces(case, cuts, flush_between):
    url, secrets = case
    text = f"prefetchd: {url}: connection refused\n{json.dumps({'file_id': url}, indent=2)}" \
           f"\r{url} 10 MiB"
    target = io.StringIO()
    w = RedactingWriter(target)
    pos = 0
    for c in sorted(min(c, len(text)) for c in cuts):
        w.write(text[pos:c])
        if flush_between:
            w.flush()
        pos = c
    w.write(text[pos:])
    w.close()
    assert_clean(target.getvalue(), secrets)
    assert target.getvalue() == redact_text(text)  # nothing lost, nothing reordered


@pytest.mark.parametrize("as_json", [True, False])
@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=secret_urls())
def test_log_lines_carry_display_forms(as_json, case):
    url, secrets = case
    buf = io.StringIO()
    before = structlog.get_config()
    logsetup.configure("debug", stream=buf, json=as_json)
    try:
        log = structlog.get_logger("test")
        log.warning("download", file_id=url, error=f"http {url}: connection refused",
                    requeued=[url], detail={"url": url})
        try:
            raise ValueError(f"cannot open {url}")
        except ValueError:
            log.exception("fetch_crashed", file_id=url)
    finally:
        structlog.configure(**before)
    out = buf.getvalue()
    assert "download" in out and "fetch_crashed" in out and "ValueError" in out
    assert_clean(out, secrets)


@given(secret_urls())
def test_mirror_payload_carries_display_forms(case):
    url, secrets = case
    rows = [{"event_id": str(uuid.uuid4()), "provider": "web", "file_id": url,
             "destination": "/mnt/project/downloads/ab12/x.bin", "bytes": 1,
             "duration_ms": 1, "cache_hit": 0, "sha256": "0" * 64, "at": 0.0},
            {"event_id": str(uuid.uuid4()), "provider": "files", "file_id": "file-abc",
             "destination": None, "bytes": 1, "duration_ms": 1, "cache_hit": 1,
             "sha256": None, "at": 0.0}]
    sent = payload(rows, "h")
    assert_clean(json.dumps(sent), secrets)
    assert sent[0]["file_id"] == display_id(url)
    assert sent[1]["file_id"] == "file-abc"  # no secret: unchanged, still matches uploads


# -- end to end --------------------------------------------------------------------------------


def _secret() -> str:
    return "S" + uuid.uuid4().hex[:15]


def _refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


class Ids:
    """Three URL ids with secrets: one served by the loopback files server, one that
    it answers 404, one on a port that refuses connections.

    They go through the suite config's explicit `[providers.web]` (type http). Once the
    http provider refuses private addresses by default, that section needs
    `allow_private_networks = true` for these loopback URLs.
    """

    def __init__(self, env) -> None:
        self.secrets = [_secret() for _ in range(9)]
        u, p, sig, cred, tok, u2, p2, sig2, sig3 = self.secrets
        query = f"X-Amz-Credential={cred}&X-Amz-Signature={sig}&token={tok}"
        env.server.add(f"blob.bin?{query}", b"secret-free bytes", filename="blob.bin")
        base = env.server.url.replace("://", "://{}@", 1)
        self.good = base.format(f"{u}:{p}") + f"/raw/blob.bin?{query}"
        self.missing = base.format(f"{u2}:{p2}") + f"/raw/gone.bin?sig={sig2}"
        self.refused = f"http://{u}:{p}@127.0.0.1:{_refused_port()}/x.bin?X-Amz-Signature={sig3}"
        self.all = [self.good, self.missing, self.refused]


def test_cli_output_never_shows_a_secret(env):
    ids = Ids(env)
    env.write_config(download="retries = 0")
    runs = [
        env.invoke("want", ids.refused, "--provider", "web"),
        env.invoke("-v", "get", ids.good, "--provider", "web"),
        env.invoke("-v", "get", ids.missing, ids.refused, "--provider", "web"),
        env.invoke("ls"), env.invoke("ls", "--json"),
        env.invoke("status"), env.invoke("status", "--json"),
        env.invoke("stats"), env.invoke("stats", "--json"), env.invoke("path", ids.refused),
        env.invoke("verify", ids.good), env.invoke("gc", "--dry-run"),
        env.invoke("unwant", ids.good + "&more=1"),  # an error that names the id
        env.invoke(ids.good),  # argparse: invalid choice, names the id
        env.invoke("get", "--ttl", ids.good, "x"),  # argparse: a bad option value
        env.invoke("release", ids.good),
    ]
    for r in runs:
        assert_clean(r.stdout + r.stderr, ids.secrets)
    assert runs[1].returncode == 0 and runs[1].stdout.strip().endswith("blob.bin")
    assert '"event": "download"' in runs[1].stderr  # -v logged the download...
    assert display_id(ids.good) in runs[1].stderr  # ...under its display form
    assert runs[2].returncode == 1 and display_id(ids.missing) in runs[2].stderr
    assert runs[-1].returncode == 0 and "removed" in runs[-1].stdout
    listed = {e["file_id"]: e for e in json.loads(runs[4].stdout)}
    assert set(listed) == {display_id(i) for i in ids.all}
    assert listed[display_id(ids.missing)]["state"] == "failed"
    status = json.loads(runs[6].stdout)
    assert {e["file_id"] for e in status["last_errors"]} >= {display_id(ids.missing)}
    with env.prefetch() as p:  # the manifest keeps the real ids
        assert {r.file_id for r in p.manifest.rows()} == set(ids.all)


def test_daemon_log_and_supabase_rows_never_carry_a_secret(env, supa):  # noqa: F811 - the fixture
    ids = Ids(env)
    (env.src / "plain").write_bytes(b"plain")
    supa.upload("local", "plain", b"plain")
    # The supa fixture's config, with no retries and the daemon's most verbose logging.
    env.config.write_text(env.config.read_text().replace("retries = 4", "retries = 0").replace(
        'default_provider = "files"', 'default_provider = "files"\nlog_level = "debug"'))
    d = DaemonProc(env).ready()
    try:
        assert env.invoke("want", *ids.all, "--provider", "web").returncode == 0
        assert env.invoke("want", "plain", "--provider", "local").returncode == 0

        def settled():
            with env.prefetch() as p:
                return {r.file_id: r.state for r in p.manifest.rows()}

        wait_until(lambda: settled() == {ids.good: "ready", ids.missing: "failed",
                                         ids.refused: "retrying", "plain": "ready"}, timeout=30)
        wait_until(lambda: supa.one("SELECT count(*) FROM {s}.file_download_history")[0] == 2,
                   timeout=30)
    finally:
        assert d.stop() == 0
    log = d.logtext()
    assert log.count('"event": "download"') >= 4
    assert_clean(log, ids.secrets)
    rows = supa.pg.execute(f"SELECT h::text FROM {supa.schema}.file_download_history h"
                           ).fetchall()
    assert_clean(json.dumps(rows), ids.secrets)
    stored = {r[0] for r in supa.pg.execute(
        f"SELECT file_id FROM {supa.schema}.file_download_history").fetchall()}
    assert stored == {display_id(ids.good), "plain"}
    # An id without secrets is sent as it is: its upload row is counted.
    assert supa.one("SELECT download_count FROM {s}.provider_file_uploads")[0] == 1


def test_receipts_and_error_files_never_carry_a_secret(env):
    from prefetchd.inbox.watch import Inbox

    ids = Ids(env)
    with env.prefetch() as p:
        ib = Inbox(p, env.settings().inbox_path, lambda: None)
        try:
            (ib.path / "ok.json").write_text(json.dumps(
                [{"file_id": i, "provider": "web"} for i in ids.all]))
            (ib.path / "bad.json").write_text(json.dumps(
                [{"file_id": ids.good, "provider": "web"},
                 {"file_id": ids.refused, "sha256": "not-a-hash"}]))
            assert ib.process("ok.json")
            ib.process("bad.json")
            written = [f.read_text() for f in ib.path.rglob("*.json")
                       if f.name.endswith((".receipt.json", ".error.json"))]
        finally:
            ib.close()
    assert len(written) == 2
    for text in written:
        assert_clean(text, ids.secrets)
