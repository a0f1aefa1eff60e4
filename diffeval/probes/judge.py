"""An optional LLM judge for `halluc`: any OpenAI-compatible chat endpoint (a local vLLM,
llama.cpp server or Ollama, or a hosted one) answers the DIFF paper's binary question, is the
output free of content the context does not support?

Verdicts are cached on disk by the content hash of (model, question, context, output), so a
rerun asks nothing twice. Network errors, timeouts, server errors and malformed replies are
retried with exponential backoff, then reported per sample ("error: ..."), never counted as a
verdict. The API key comes from an environment variable and is never stored or logged."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PROMPT = ("You check answers for hallucination. Given a source text and a model's output, decide whether the "
          "output is free of any content that the source does not support.\n\n"
          "Source:\n{context}\n\n{task}Output:\n{output}\n\n"
          "Is the output free of hallucination with respect to the source? Reply with exactly one word: yes or no.")


@dataclass(frozen=True)
class Judge:
    url: str  # base URL of the API, e.g. http://127.0.0.1:8000/v1
    model: str
    key_env: str = "DIFFEVAL_JUDGE_API_KEY"
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry; doubled each time
    cache_dir: Optional[Path] = None

    def _key(self, context: str, task: str, output: str) -> str:
        blob = json.dumps([self.model, PROMPT, context, task, output]).encode()
        return hashlib.sha256(blob).hexdigest()

    def verdict(self, context: str, question: Optional[str], output: str) -> dict:
        """{"free": True/False} or {"error": "..."}; cached when a cache_dir is set."""
        task = f"Question:\n{question}\n\n" if question else "Task: summarise the source.\n\n"
        key = self._key(context, task, output)
        path = self.cache_dir / f"{key}.json" if self.cache_dir is not None else None
        if path is not None and path.exists():
            return json.loads(path.read_text())
        result = self._ask(PROMPT.format(context=context, task=task, output=output))
        if path is not None and "error" not in result:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(path)
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
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    reply = json.loads(resp.read().decode("utf-8"))
                text = reply["choices"][0]["message"]["content"].strip().lower()
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code < 500 and exc.code != 429:
                    break  # a client error does not get better by asking again
                continue
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = f"unreachable ({getattr(exc, 'reason', exc)})"
                continue
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                last = "malformed reply"
                continue
            word = text.split()[0].strip(".,!:") if text else ""
            if word in ("yes", "no"):
                return {"free": word == "yes"}
            last = f"malformed reply ({text[:40]!r})"
        return {"error": f"{last} after {self.retries} attempt(s)"}
