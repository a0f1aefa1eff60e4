"""The judge client against loopback servers that misbehave: redirects to another origin (the
key must not follow), a reply trickled a byte at a time (the wall-clock deadline), an enormous
reply (the size cap), a damaged cache entry (asked again with one warning), URLs it must
refuse, and judge failures that a rerun retries."""

import json
import logging
import time

import pytest

from diffeval.errors import ConfigError
from diffeval.probes import halluc as P
from diffeval.probes.judge import Judge, check_url, redacted
from diffeval.run import RunOptions, run_probe
from helpers import LoopbackServer, run_cli, saved_tiny_models

KEY = "sk-secret-key"


class _Server(LoopbackServer):
    """A loopback endpoint; `behave(handler)` answers each POST. Records every request's path
    and Authorization header."""

    def __init__(self, behave):
        self.seen = []

        def post(h):
            h.rfile.read(int(h.headers.get("Content-Length", 0)))
            self.seen.append((h.path, h.headers.get("Authorization")))
            behave(h)

        super().__init__(post)


def _answer(handler, text="yes", status=200):
    data = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _redirect(to):
    def behave(handler):
        handler.send_response(307)
        handler.send_header("Location", to)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return behave


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("DIFFEVAL_JUDGE_API_KEY", KEY)


def test_a_redirect_to_another_origin_is_not_followed_and_gets_no_key(key):
    other = _Server(_answer)
    first = _Server(_redirect(other.url + "/chat/completions"))
    try:
        out = Judge(first.url, "j", timeout=5, retries=2, backoff=0.01).verdict("ctx", "q?", "a")
    finally:
        first.close()
        other.close()
    assert "error" in out and "another origin" in out["error"], out
    assert other.seen == [] and first.seen == [("/v1/chat/completions", f"Bearer {KEY}")]


def test_a_same_origin_redirect_is_followed(key):
    server = _Server(lambda h: _answer(h, "no") if h.path.startswith("/v2") else _redirect("/v2/chat/completions")(h))
    try:
        out = Judge(server.url, "j", timeout=5, retries=1).verdict("ctx", "q?", "a")
    finally:
        server.close()
    assert out == {"free": False} and [p for p, _ in server.seen] == ["/v1/chat/completions", "/v2/chat/completions"]


def _trickle(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.05)


def _enormous(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", str(8 << 20))
    handler.end_headers()
    for _ in range(8 << 4):
        handler.wfile.write(b" " * (1 << 16))


@pytest.mark.parametrize("behave, why", [(_trickle, "no complete reply within 1 s"), (_enormous, "larger than")])
def test_a_slow_or_enormous_reply_is_cut(behave, why):
    server = _Server(behave)
    started = time.monotonic()
    try:
        out = Judge(server.url, "j", timeout=1, retries=2, backoff=0.01).verdict("ctx", "q?", "a")
    finally:
        server.close()
    assert "error" in out and why in out["error"], out
    assert time.monotonic() - started < 6  # two deadlines of 1 s, not 50 s of trickle


def test_a_damaged_cache_entry_is_asked_again_with_one_warning(tmp_path, caplog):
    server = _Server(_answer)
    try:
        judge = Judge(server.url, "j", timeout=5, retries=1, cache_dir=tmp_path)
        assert judge.verdict("ctx", "q?", "a") == {"free": True}
        (entry,) = tmp_path.glob("*.json")
        for damage in (b"\xff{not json", b'{"free": "yes"}', b"[1, 2]"):
            entry.write_bytes(damage)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="diffeval"):
                assert judge.verdict("ctx", "q?", "a") == {"free": True}
            assert len(caplog.records) == 1 and "damaged judge cache entry" in caplog.records[0].getMessage()
            assert json.loads(entry.read_text()) == {"free": True}
    finally:
        server.close()
    assert len(server.seen) == 4


@pytest.mark.parametrize("url, why", [("not a url", "http://"), ("file:///etc/passwd", "http://"),
                                      ("ftp://host/v1", "http://"), ("http://user:s3cr3t@host/v1", "password"),
                                      ("http://host:port/v1", "not a URL"), ("http:///v1", "host")])
def test_judge_urls_that_are_refused(url, why):
    with pytest.raises(ConfigError, match=why) as info:
        check_url(url)
    assert "s3cr3t" not in str(info.value)


def test_redacted_drops_user_and_password():
    assert redacted("http://user:KEY@host:8000/v1") == "http://host:8000/v1"
    assert redacted("https://host/v1") == "https://host/v1"


def test_judge_failures_are_retried_by_a_rerun(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFEVAL_CACHE_DIR", str(tmp_path / "cache"))  # a verdict cache of its own
    mode = {"reply": "maybe"}
    server = _Server(lambda h: _answer(h, mode["reply"]))
    ckpt = saved_tiny_models(tmp_path / "ck")[:1]
    try:
        cfg = P.PROBE.config({"lengths": "500", "samples": 1, "n_facts": 4, "judge_url": server.url,
                              "judge_model": "j", "judge_timeout": 5})
        opts = RunOptions(device="cpu", progress=False)
        first = run_probe(P.PROBE, cfg, ckpt, tmp_path / "r", opts)
        mode["reply"] = "yes"  # the judge is back
        again = run_probe(P.PROBE, cfg, ckpt, tmp_path / "r", opts)
    finally:
        server.close()
    assert first["metrics"]["transformer"]["judge_errors"]["value"] == 3  # the three answers of the one sample
    assert again["metrics"]["transformer"]["judge_errors"]["value"] == 0
    assert again["metrics"]["transformer"]["judge_free_rate"]["value"] == 1
    assert again["timing"]["models"]["transformer"]["resumed_samples"] == 0


def test_a_judge_url_that_is_not_a_url_exits_2(tmp_path, capsys):
    assert run_cli(["halluc", "--ckpt", "zoo:transformer-tiny", "--judge-url", "not a url", "--judge-model", "j",
                    "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--judge-url" in err[0] and not (tmp_path / "o").exists()
