"""An optional LLM judge for `halluc`: any OpenAI-compatible chat endpoint (a local vLLM,
llama.cpp server or Ollama, or a hosted one) answers the DIFF paper's binary question, is the
output free of content the context does not support?

Verdicts are cached on disk by the content hash of (model, question, context, output), so a
rerun asks nothing twice. Network errors, timeouts, server errors and malformed replies are
retried with exponential backoff, then reported per sample ("error: ..."), never counted as a
verdict and never cached (a rerun asks again). The API key comes from an environment variable
and is never stored or logged (a URL holding a user name or password is refused); it is sent to the URL's own origin only: redirects to another
scheme, host or port are not followed. Each request has a wall-clock deadline (`timeout`)
and its reply a size cap; a damaged cache entry is asked again with one warning."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urljoin, urlsplit

from diffeval.errors import ConfigError, shown

PROMPT = ("You check answers for hallucination. Given a source text and a model's output, decide whether the "
          "output is free of any content that the source does not support.\n\n"
          "Source:\n{context}\n\n{task}Output:\n{output}\n\n"
          "Is the output free of hallucination with respect to the source? Reply with exactly one word: yes or no.")
REPLY_LIMIT = 1 << 20  # bytes of one reply: a verdict is a few hundred
MAX_REDIRECTS = 3  # same-origin ones (a trailing slash)

log = logging.getLogger("diffeval")


def check_url(url: str) -> str:
    """An http(s) base URL with a host and no user name or password, as given; ConfigError
    (field judge_url) otherwise."""
    try:
        parts = urlsplit(str(url))
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        raise ConfigError(f"{shown(url)}: not a URL ({exc})", "judge_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{shown(redacted(str(url)))}: give an http:// or https:// URL with a host", "judge_url")
    if "@" in parts.netloc:  # a key in the URL would be recorded with the run's parameters
        raise ConfigError(f"{shown(redacted(str(url)))}: holds a user name or password; pass the key in "
                          "$DIFFEVAL_JUDGE_API_KEY instead", "judge_url")
    if parts.query or parts.fragment:
        raise ConfigError(f"{shown(redacted(str(url)))}: a base URL has no query or fragment", "judge_url")
    return str(url)


def redacted(url: str) -> str:
    """`url` without user name and password (what results and logs may show)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


class JudgeHTTPError(Exception):
    def __init__(self, code: int, why: str = "") -> None:
        super().__init__(f"HTTP {code}{why}")
        self.code = code


@dataclass(frozen=True)
class Judge:
    url: str  # base URL of the API, e.g. http://127.0.0.1:8000/v1
    model: str
    key_env: str = "DIFFEVAL_JUDGE_API_KEY"
    timeout: float = 60.0  # seconds per request, wall clock, reply included
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry; doubled each time
    cache_dir: Optional[Path] = None

    def _key(self, context: str, task: str, output: str) -> str:
        blob = json.dumps([self.model, PROMPT, context, task, output]).encode()
        return hashlib.sha256(blob).hexdigest()

    def verdict(self, context: str, question: Optional[str], output: str) -> dict:
        """{"free": True/False} or {"error": "..."}; verdicts cached when a cache_dir is set."""
        task = f"Question:\n{question}\n\n" if question else "Task: summarise the source.\n\n"
        key = self._key(context, task, output)
        path = self.cache_dir / f"{key}.json" if self.cache_dir is not None else None
        cached = _cached(path) if path is not None else None
        if cached is not None:
            return cached
        result = self._ask(PROMPT.format(context=context, task=task, output=output))
        if path is not None and "error" not in result:
            from diffeval.results import write_json

            write_json(path, result)
        return result

    def _ask(self, prompt: str) -> dict:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 4,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.url.rstrip("/") + "/chat/completions"
        last = "no attempt"
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = json.loads(_post_within(url, body, headers, self.timeout).decode("utf-8"))
                text = reply["choices"][0]["message"]["content"].strip().lower()
            except JudgeHTTPError as exc:
                last = str(exc)
                if exc.code < 500 and exc.code != 429:
                    break  # a client error (or a refused redirect) does not get better by asking again
                continue
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                last = f"unreachable ({exc})"
                continue
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                last = "malformed reply"
                continue
            word = text.split()[0].strip(".,!:") if text else ""
            if word in ("yes", "no"):
                return {"free": word == "yes"}
            last = f"malformed reply ({text[:40]!r})"
        return {"error": f"{last} after {attempt + 1} attempt(s)"}


def _cached(path: Path) -> Optional[dict]:
    """A cached verdict, or None when there is none or it is damaged (one warning: asked again)."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
        if isinstance(value, dict) and set(value) == {"free"} and isinstance(value["free"], bool):
            return value
        why = "not a verdict"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = type(exc).__name__
    log.warning("%s: damaged judge cache entry (%s); asked again", path, why)
    return None


def _post_within(url: str, body: bytes, headers: dict, seconds: float) -> bytes:
    """POST `body` and return the reply body, all within `seconds` of wall clock (a server
    that trickles bytes cannot hold a run): the exchange runs in a thread whose connection is
    closed at the deadline."""
    box: dict = {}

    def work() -> None:
        try:
            box["reply"] = _exchange(url, body, headers, seconds, box)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True, name="diffeval-judge")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        conn = box.get("conn")
        if conn is not None:
            conn.close()
        raise TimeoutError(f"no complete reply within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["reply"]


def _exchange(url: str, body: bytes, headers: dict, seconds: float, box: dict) -> bytes:
    """One POST, following only same-origin redirects; the reply body, at most REPLY_LIMIT."""
    deadline, origin = time.monotonic() + seconds, _origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = box["conn"] = kind(parts.hostname, parts.port, timeout=seconds)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        if resp.status in (301, 302, 303, 307, 308):
            target = urljoin(url, resp.getheader("Location") or "")
            conn.close()
            if _origin(target) != origin:
                raise JudgeHTTPError(resp.status, f": redirected to another origin ({redacted(target)}); not followed")
            url = target
            continue
        data = bytearray()
        while chunk := resp.read1(65536):
            data += chunk
            if len(data) > REPLY_LIMIT:
                raise JudgeHTTPError(resp.status, f": reply larger than {REPLY_LIMIT:,} bytes; not read")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete reply within {seconds:g} s")
        conn.close()
        if resp.status >= 400:
            raise JudgeHTTPError(resp.status)
        return bytes(data)
    raise JudgeHTTPError(310, f": more than {MAX_REDIRECTS} redirects")
