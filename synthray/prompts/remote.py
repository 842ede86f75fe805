"""The `openai` captioner backend: `POST {base_url}/chat/completions` on any OpenAI-compatible endpoint.

Standard library only (urllib). Each request sends the instruction and the image as a base64 JPEG data URL in one
user turn, as the study did (it called the Responses API of api.openai.com with the same two parts; chat
completions is the dialect every OpenAI-compatible server speaks). Parameters the study did not send (temperature,
max tokens, image detail) are not sent while they are null, so the endpoint's defaults apply as they did there.

- Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff (`backoff_s`, doubling,
  at most `max_backoff_s`; a `Retry-After` answer wins), `max_attempts` attempts in all (the study: 5 attempts,
  5 s doubling, 90 s timeout). Then one line naming the endpoint and the last failure. Any other 4xx (bad key,
  unknown model) fails at once: retrying cannot help.
- Rate limit: `requests_per_minute` for the whole pool. Each actor gets an equal share (the limit divided by the
  pool's largest size, `max(num_actors, max_actors)`), and spaces its request starts (retries included)
  60/share seconds apart, so no minute ever holds more than the limit. `concurrency` requests run at once per actor.
- The key is read from `$<api_key_env>` on the driver, checked before launch, and handed to the actors inside Ray
  (a `Secret`, whose repr is `***`); an actor's own environment wins when it has the variable. It never enters
  the config, a key, an artifact or a log line; error text from the endpoint is redacted of anything key-like.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from synthray.core.registry import SynthrayError
from synthray.core.secrets import require_secret, safe_to_send_secrets

DETAILS = (None, "low", "high", "auto")
MAX_RETRY_AFTER_S = 600.0  # a Retry-After beyond this is a server asking us to give up, not to wait
TRANSIENT = (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException)


class Secret:
    """A value that never shows in a repr, a log line or a traceback's locals (an API key on its way to the actors)."""

    def __init__(self, value: str | None):
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


class RateLimiter:
    """At most `per_minute` starts per minute from this process: starts are spaced 60/per_minute s apart (a strict
    spacing rather than a burst allowance, so a 60 s window never holds more than the limit). None: no limit."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:  # reserve a slot; sleep outside the lock so other threads can reserve theirs
            now = time.monotonic()
            slot = max(now, self.next)
            self.next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def retry_after(headers: Any) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), or None."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def check_openai(c: dict[str, Any], need_key: bool) -> None:
    o = c["openai"]
    if need_key:
        require_secret(str(o["api_key_env"]), "captioner.backend=openai",
                       "captioner.openai.api_key_env names another variable, or use captioner.backend=local")
    if not re.match(r"^https?://[^/\s]+", str(o["base_url"] or "")):
        raise SynthrayError(f"captioner.openai.base_url={o['base_url']} is not an http(s) URL, e.g. https://api.openai.com/v1")
    if not safe_to_send_secrets(str(o["base_url"])):
        raise SynthrayError(f"captioner.openai.base_url={o['base_url']} is plain http to a public host: the API key would "
                            "cross the network unencrypted; use https:// (plain http only to localhost or a private address)")
    if not o.get("model"):
        raise SynthrayError("captioner.openai.model is empty; e.g. gpt-4.1-nano (the study's)")
    if o.get("detail") not in DETAILS:
        raise SynthrayError(f"captioner.openai.detail={o['detail']} is not one of low, high, auto (or null: not sent)")
    t = c.get("temperature")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 2):
        raise SynthrayError(f"captioner.temperature={t} must be null (the endpoint's default) or a number in [0, 2]")
    for key in ("concurrency", "max_attempts", "timeout_s", "backoff_s", "max_backoff_s"):
        value = o.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < (0 if "backoff" in key else 1e-9):
            raise SynthrayError(f"captioner.openai.{key} must be a {'non-negative' if 'backoff' in key else 'positive'} "
                                f"number, got {value!r}")
    rpm = o.get("requests_per_minute")
    if rpm is not None and (not isinstance(rpm, (int, float)) or rpm <= 0):
        raise SynthrayError(f"captioner.openai.requests_per_minute must be > 0 or null (no limit), got {rpm!r}")


class OpenAICaptioner:
    """Captions through an OpenAI-compatible chat completions endpoint (default: gpt-4.1-nano, the study's)."""

    remote = True  # HTTP: its actors need no GPU, and share one rate limit

    @staticmethod
    def api_key_env(c: dict[str, Any]) -> str | None:
        """The environment variable its workers read the key from (never a config value)."""
        return str(c["openai"]["api_key_env"])

    @staticmethod
    def identity(c: dict[str, Any]) -> dict[str, Any]:
        o = c["openai"]
        # The model name identifies the captions; the endpoint that serves it and the key do not.
        return {"model": {"api": "chat-completions", "name": str(o["model"])},
                "params": {"temperature": c.get("temperature"), "max_tokens": c.get("max_tokens"), "detail": o.get("detail")}}

    @staticmethod
    def check(c: dict[str, Any], models: Any, need_key: bool) -> None:
        check_openai(c, need_key)

    def __init__(self, c: dict[str, Any], instruction: str, models: Any, device: str, secret: Secret, pool_size: int):
        o = c["openai"]
        self.key = os.environ.get(str(o["api_key_env"])) or secret.reveal()
        if not self.key:
            raise SynthrayError(f"${o['api_key_env']} is not set on node {os.uname().nodename} and none came from the driver")
        self.url = str(o["base_url"]).rstrip("/") + "/chat/completions"
        self.model, self.instruction, self.detail = str(o["model"]), instruction, o.get("detail")
        self.temperature, self.max_tokens = c.get("temperature"), c.get("max_tokens")
        self.timeout, self.attempts = float(o["timeout_s"]), int(o["max_attempts"])
        self.backoff, self.max_backoff = float(o["backoff_s"]), float(o["max_backoff_s"])
        rpm = o.get("requests_per_minute")
        self.limiter = RateLimiter(float(rpm) / max(1, pool_size) if rpm else None)
        self.pool = ThreadPoolExecutor(max_workers=int(o["concurrency"]), thread_name_prefix="caption")

    def __call__(self, images: list[bytes]) -> list[str | Exception]:
        futures = [self.pool.submit(self.caption, data) for data in images]
        out: list[str | Exception] = []
        for future in futures:  # every request finishes (or fails) before we return: none is left running
            try:
                out.append(future.result())
            except Exception as err:  # noqa: BLE001 - handed back per image; the stage keeps the rest
                out.append(err)
        return out

    def payload(self, jpeg: bytes) -> dict[str, Any]:
        image: dict[str, Any] = {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")}
        if self.detail:
            image["detail"] = self.detail
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": [
            {"type": "text", "text": self.instruction}, {"type": "image_url", "image_url": image}]}]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = int(self.max_tokens)  # the name every OpenAI-compatible server knows
        return body

    def caption(self, jpeg: bytes) -> str:
        """One image's caption, retrying transient failures; one-line SynthrayError when it cannot be had."""
        data = json.dumps(self.payload(jpeg)).encode()
        last = ""
        for attempt in range(1, self.attempts + 1):
            self.limiter.wait()
            request = urllib.request.Request(self.url, data=data, method="POST", headers={
                "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
            wait = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._content(response.read())
            except urllib.error.HTTPError as err:
                message = self._redact(_error_text(err))
                if err.code != 429 and err.code < 500:
                    raise SynthrayError(f"POST {self.url} answered HTTP {err.code}: {message}") from None
                last, wait = f"HTTP {err.code}: {message}", retry_after(err.headers)
            except TRANSIENT as err:
                last = self._redact(f"{type(err).__name__}: {getattr(err, 'reason', err)}")
            if attempt < self.attempts:
                delay = wait if wait is not None else self.backoff * 2 ** (attempt - 1)
                time.sleep(min(delay, MAX_RETRY_AFTER_S) if wait is not None else min(delay, self.max_backoff))
        raise SynthrayError(f"{self.attempts} attempts to POST {self.url} failed; last: {last}")

    def _content(self, raw: bytes) -> str:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise SynthrayError(f"POST {self.url}: unexpected answer (no choices[0].message.content): "
                                f"{self._redact(raw[:200].decode(errors='replace'))}") from None
        return str(content or "").strip()

    def _redact(self, text: str) -> str:
        text = text.replace(self.key, "***") if self.key else text
        return re.sub(r"sk-[A-Za-z0-9_\-*]{4,}", "sk-***", text)


def _error_text(err: urllib.error.HTTPError) -> str:
    """The endpoint's error message (OpenAI's `{"error": {"message": ...}}`), else the start of the body."""
    try:
        body = err.read()
    except Exception:  # noqa: BLE001 - a broken body still leaves the status line
        body = b""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace") or err.reason
    return " ".join(str(message).split())[:200]
