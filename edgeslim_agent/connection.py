"""The agent's websocket loop: hello, heartbeats, acks, deployments, and jittered reconnects.

One :class:`Agent` owns the connection and a single deployment worker. Results are written to
the outbox before they are sent and removed only on the server's ``ack``, so a dropped
connection, a server restart or a killed agent loses nothing: every reconnect sends the outbox
again, and the server resends every unfinished deployment, whose finished steps the agent skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from edgeslim_agent import __version__
from edgeslim_agent.bench import accuracy_check, latency_runs
from edgeslim_agent.config import (
    AgentConfig,
    ConfigError,
    ensure_dir,
    read_json,
    write_json,
)
from edgeslim_agent.container import ContainerError, DecodeCaps, decode_container_isolated
from edgeslim_agent.download import (
    DownloadError,
    VerificationError,
    download,
    no_redirect_opener,
    server_url,
)
from edgeslim_agent.facts import collect
from edgeslim_agent.outbox import Outbox
from edgeslim_agent.protocol import (
    CLOSE_EVICTED,
    CLOSE_REENROLLED,
    CLOSE_REVOKED,
    FAIL_BAD_SIGNATURE,
    FAIL_BENCHMARK,
    FAIL_CANCELLED,
    FAIL_DECODE,
    FAIL_DOWNLOAD,
    FAIL_ROLLBACK,
    FAIL_UNSIGNED,
    FORMAT_CONTAINER,
    MAX_MESSAGE_BYTES,
    RESULT_ACCURACY,
    RESULT_COMPLETE,
    RESULT_FAILED,
    RESULT_LATENCY,
    SERVER_MESSAGES,
    TASK_DETECTION,
    Ack,
    Cancel,
    Deploy,
    ErrorMessage,
    Heartbeat,
    Hello,
    Message,
    Progress,
    ProtocolError,
    Result,
    Welcome,
    b64decode,
    decode,
    encode,
    result_seq,
)
from edgeslim_agent.tls import client_context
from edgeslim_agent.trust import KeyStatement, TrustError, TrustStore, now_ms

log = logging.getLogger("edgeslim.agent")

KEYS_PATH = "/api/v1/agent/keys"  # the server's signed key statements

EXIT_REFUSED = 3  # the server refused or revoked this credential: enroll again
EXIT_EVICTED = 4  # another agent with the same identity took over

# After the server said "re-enrolled" (CLOSE_REENROLLED), how long the agent keeps re-reading its
# credential file and retrying while the server still refuses it: ``edgeslim-agent enroll``
# writes the new file just after the server replaced the credential, so the close can arrive
# first.
REENROLL_GRACE_S = 120.0


class DeploymentCancelled(Exception):
    """The server cancelled the running deployment (a ``cancel`` message)."""


class CredentialReplaced(Exception):
    """The server closed with CLOSE_REENROLLED: this credential was replaced by a new one."""


class AgentStop(Exception):
    """The agent must stop for good (not reconnect); ``exit_code`` says why."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Backoff:
    """Exponential backoff with "equal jitter": a delay in [d/2, d], d doubling up to ``cap``.

    The jitter spreads a fleet's reconnects after a server restart instead of having every
    agent knock at the same instant.
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        d = min(self.cap, self.base * 2**self.failures)
        self.failures = min(self.failures + 1, 30)
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.failures = 0


def ws_url(server: str) -> str:
    parts = urllib.parse.urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/ws/agent/", "", ""))


def origin_of(server: str) -> str:
    parts = urllib.parse.urlsplit(server)
    return f"{parts.scheme}://{parts.netloc}"


class DeploymentState:
    """Which results of one deployment are done, on disk (``deployments/<id>.json``)."""

    def __init__(self, directory: Path, deployment_id: int) -> None:
        self.path = ensure_dir(directory) / f"{deployment_id}.json"
        data: dict[str, Any] = {}
        if self.path.exists():
            with contextlib.suppress(OSError, ValueError):
                data = read_json(self.path)
        self.done: set[int] = {int(s) for s in data.get("done", [])}
        self.finished = bool(data.get("finished", False))

    def mark(self, seq: int, *, finished: bool = False) -> None:
        self.done.add(seq)
        self.finished = self.finished or finished
        write_json(self.path, {"done": sorted(self.done), "finished": self.finished})


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        state_dir: Path,
        *,
        backoff: Backoff | None = None,
        facts_fn: Callable[[], Any] = collect,
    ) -> None:
        self.config = config
        self.state_dir = ensure_dir(state_dir)
        self.outbox = Outbox(state_dir / "outbox")
        self.deployments_dir = ensure_dir(state_dir / "deployments")
        self.artifacts_dir = ensure_dir(state_dir / "artifacts")
        self.trust_path = state_dir / "trust.json"
        self.backoff = backoff or Backoff()
        self.facts_fn = facts_fn
        self.connected = asyncio.Event()
        self.welcome: Welcome | None = None
        self._ws: ClientConnection | None = None
        self._queue: asyncio.Queue[Deploy] = asyncio.Queue()
        self._known: set[int] = set()
        # Deployments the server cancelled: not started, or stopped before their next batch.
        self._cancelled: set[int] = set()
        self._busy = False
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._trust_lock = threading.Lock()
        # The server's last error message: a revocation's reason arrives in it before the close.
        self._last_server_error = ""
        # Until when a refused handshake means "the new credential file is not written yet"
        # rather than "revoked" (monotonic seconds; 0: not re-enrolled).
        self._reenrolled_until = 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Connect, serve, and reconnect with jittered backoff until stopped.

        Raises:
            AgentStop: the credential was refused or revoked, or another agent took over.
        """
        self._loop = asyncio.get_running_loop()
        worker = asyncio.create_task(self._deployment_worker())
        try:
            while not self._stop.is_set():
                try:
                    await self._serve_once()
                except AgentStop:
                    raise
                except CredentialReplaced:
                    self._reenrolled_until = time.monotonic() + REENROLL_GRACE_S
                    self.backoff.reset()
                    self._reload_credential()
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    if status in (401, 403) and time.monotonic() < self._reenrolled_until:
                        log.warning(
                            "the server refused the credential after a re-enrollment (HTTP %s); "
                            "reading the credential file again",
                            status,
                        )
                        self._reload_credential()
                    elif status in (401, 403):
                        raise AgentStop(
                            EXIT_REFUSED,
                            f"the server refused this device's credential (HTTP {status}): "
                            "it was revoked or is unknown; enroll again",
                        ) from exc
                    log.warning("handshake failed: HTTP %s", status)
                except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                    log.warning("connection lost: %s", exc or type(exc).__name__)
                except ProtocolError as exc:
                    log.error("protocol error from the server: %s", exc)
                if self._stop.is_set():
                    break
                delay = self.backoff.next()
                log.info("reconnecting in %.1f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def _serve_once(self) -> None:
        headers = {"Authorization": f"Device {self.config.credential}"}
        async with connect(
            ws_url(self.config.server),
            additional_headers=headers,
            origin=origin_of(self.config.server),  # type: ignore[arg-type]
            user_agent_header=f"edgeslim-agent/{__version__}",
            max_size=MAX_MESSAGE_BYTES,
            ssl=self._ssl_context(),
            open_timeout=15,
            close_timeout=5,
        ) as ws:
            await ws.send(encode(Hello(agent_version=__version__, facts=self.facts_fn())))
            first = decode(await asyncio.wait_for(ws.recv(), timeout=15), allowed=SERVER_MESSAGES)
            if isinstance(first, ErrorMessage):
                raise ProtocolError(f"server error {first.code}: {first.message}")
            if not isinstance(first, Welcome):
                raise ProtocolError(f"expected welcome, got {first.TYPE}")
            self.welcome = first
            self.backoff.reset()
            self._reenrolled_until = 0.0
            self._ws = ws
            self.connected.set()
            log.info("connected to %s as device %s", self.config.server, first.device_id)
            heartbeats = asyncio.create_task(self._heartbeats(ws, first.heartbeat_s))
            stopper = asyncio.create_task(self._close_on_stop(ws))
            try:
                for result in self.outbox.pending():
                    await ws.send(encode(result))
                async for frame in ws:
                    await self._handle(decode(frame, allowed=SERVER_MESSAGES))
            except ConnectionClosed:
                pass
            finally:
                self._ws = None
                self.connected.clear()
                heartbeats.cancel()
                stopper.cancel()
            self._raise_for_close(ws)

    def _reload_credential(self) -> None:
        """Re-read ``credential.json`` (a re-enrollment wrote a new one) into ``self.config``."""
        try:
            config = AgentConfig.load(self.state_dir)
        except ConfigError as exc:
            log.error("could not reload the credential: %s", exc)
            return
        if config.credential != self.config.credential:
            log.info(
                "credential reloaded from %s (device %s, %s)",
                self.state_dir / "credential.json",
                config.device_id,
                config.device_name,
            )
        self.config = config

    async def _close_on_stop(self, ws: ClientConnection) -> None:
        await self._stop.wait()
        await ws.close()

    def _raise_for_close(self, ws: ClientConnection) -> None:
        code = ws.close_code
        reason = ws.close_reason or ""
        if code == CLOSE_REVOKED:
            reason = reason or self._last_server_error or "no reason given"
            raise AgentStop(EXIT_REFUSED, f"this device was revoked by the server: {reason}")
        if code == CLOSE_REENROLLED:
            log.warning("this device was enrolled again: reloading its credential and reconnecting")
            raise CredentialReplaced()
        if code == CLOSE_EVICTED:
            raise AgentStop(
                EXIT_EVICTED,
                "another agent connected with this device's identity and took over; "
                "stopping this one",
            )
        if not self._stop.is_set():
            log.warning("server closed the connection (%s %s)", code, reason)

    async def _heartbeats(self, ws: ClientConnection, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await ws.send(encode(Heartbeat(ts=time.time(), busy=self._busy)))

    async def _handle(self, msg: Message) -> None:
        if isinstance(msg, Ack):
            self.outbox.ack(msg.deployment_id, msg.seq)
        elif isinstance(msg, Deploy):
            deployment_id = msg.manifest.deployment_id
            if deployment_id in self._known:
                return
            state = DeploymentState(self.deployments_dir, deployment_id)
            if state.finished:
                log.debug("deployment %s: already finished here, not run again", deployment_id)
                return  # its terminal result is in the outbox or already acknowledged
            self._known.add(deployment_id)
            log.info(
                "deployment %s received: %s (%s bytes), batch sizes %s, %d warm-up + %d runs, "
                "%d threads, %s%s",
                deployment_id,
                msg.manifest.name,
                msg.manifest.size,
                msg.settings.batch_sizes,
                msg.settings.warmup,
                msg.settings.runs,
                msg.settings.threads,
                ", ".join(msg.settings.providers),
                ", with accuracy" if msg.settings.accuracy else "",
            )
            await self._queue.put(msg)
        elif isinstance(msg, Cancel):
            if msg.deployment_id not in self._cancelled:
                self._cancelled.add(msg.deployment_id)
                log.warning(
                    "deployment %s was cancelled by the server%s",
                    msg.deployment_id,
                    ": stopping it before its next step"
                    if msg.deployment_id in self._known
                    else "",
                )
        elif isinstance(msg, ErrorMessage):
            self._last_server_error = f"{msg.code}: {msg.message}"
            log.error("server says %s: %s", msg.code, msg.message)

    # --- sending from the worker thread --------------------------------------------------------

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            return  # results stay in the outbox; progress is only for the live view
        with contextlib.suppress(ConnectionClosed):
            await ws.send(text)

    def _send_threadsafe(self, msg: Message) -> None:
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._send(encode(msg)), self._loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=10)

    def _emit(self, state: DeploymentState, result: Result, *, finished: bool = False) -> None:
        self.outbox.put(result)  # on disk first: a crash from here on loses nothing
        state.mark(result.seq, finished=finished)
        self._send_threadsafe(result)

    # --- deployments ---------------------------------------------------------------------------

    async def _deployment_worker(self) -> None:
        while True:
            deploy = await self._queue.get()
            self._busy = True
            try:
                await asyncio.to_thread(self.execute, deploy)
            except Exception:
                log.exception("deployment %s crashed", deploy.manifest.deployment_id)
            finally:
                self._busy = False
                self._known.discard(deploy.manifest.deployment_id)

    def _ssl_context(self) -> Any:
        """The pinned certificate's TLS context for an https server; None for http."""
        if urllib.parse.urlsplit(self.config.server).scheme != "https":
            return None
        return client_context(self.config.tls_cert)

    def _refresh_keys(self) -> list[str]:
        """Fetch the server's key statements and apply those a trusted key signed."""
        url = server_url(self.config.server, KEYS_PATH)
        with no_redirect_opener(self._ssl_context()).open(url, timeout=30) as response:
            body = json.loads(response.read(256 * 1024))
        statements = []
        for item in body.get("statements", []):
            with contextlib.suppress(TrustError):
                statements.append(KeyStatement.from_dict(item))
        store = TrustStore.load(self.state_dir, enrolled_key=self.config.server_public_key)
        changed = store.apply(statements, at_ms=now_ms())
        if changed:
            store.save(self.state_dir)
            log.info("trusted signing keys updated from the server's statements: %s", changed)
        return changed

    def _check_trust(self, deploy: Deploy) -> tuple[str, str] | None:
        """None when a trusted key signed the manifest and it is not older than one already run.

        A manifest signed by a key this agent does not know yet (the server rotated its key)
        makes it fetch the server's key statements once: the new key is trusted only when a key
        it already trusts signed a statement for it.
        """
        manifest = deploy.manifest
        if not deploy.signature:
            return FAIL_UNSIGNED, "the artifact's manifest carries no signature"
        try:
            signature = b64decode(deploy.signature)
        except ProtocolError:
            return FAIL_BAD_SIGNATURE, "the signature is not valid base64"
        store = TrustStore.load(self.state_dir, enrolled_key=self.config.server_public_key)
        if manifest.key_id and manifest.key_id not in store.keys:
            try:
                self._refresh_keys()
            except (OSError, ValueError, DownloadError) as exc:
                log.warning("could not fetch the server's key statements: %s", exc)
            store = TrustStore.load(self.state_dir, enrolled_key=self.config.server_public_key)
        try:
            refused = store.refusal(
                manifest.key_id, manifest.signing_bytes(), signature, at_ms=now_ms()
            )
        except TrustError as exc:
            refused = str(exc)
        if refused is not None:
            return FAIL_BAD_SIGNATURE, f"the manifest's signature is not trusted: {refused}"
        with self._trust_lock:
            trust: dict[str, Any] = {}
            if self.trust_path.exists():
                with contextlib.suppress(OSError, ValueError):
                    trust = read_json(self.trust_path)
            newest = int(trust.get("newest_issued_at", 0))
            accepted = [int(x) for x in trust.get("accepted", [])]
            if manifest.deployment_id in accepted:
                return None  # resuming a deployment accepted before
            if manifest.issued_at < newest:
                return (
                    FAIL_ROLLBACK,
                    f"the manifest was issued at {manifest.issued_at}, before one already "
                    f"accepted ({newest})",
                )
            accepted = [*accepted, manifest.deployment_id][-1000:]
            write_json(
                self.trust_path,
                {"newest_issued_at": max(newest, manifest.issued_at), "accepted": accepted},
            )
        return None

    def execute(self, deploy: Deploy) -> None:
        """Verify, download, benchmark and report one deployment (blocking; runs in a thread)."""
        manifest, settings = deploy.manifest, deploy.settings
        dep_id = manifest.deployment_id
        state = DeploymentState(self.deployments_dir, dep_id)
        if state.finished:
            return
        terminal_seq = result_seq(settings, RESULT_COMPLETE)
        if dep_id in self._cancelled:  # cancelled while it waited in the queue: never started
            log.info("deployment %s: cancelled before it started; not run", dep_id)
            state.mark(terminal_seq, finished=True)
            return
        done = state.done | self.outbox.seqs(dep_id)
        if done:
            log.info("deployment %s: resuming, %d result(s) already reported", dep_id, len(done))

        def progress(stage: str, fraction: float, message: str = "") -> None:
            if stage in ("benchmarking", "evaluating") and dep_id in self._cancelled:
                raise DeploymentCancelled()
            self._send_threadsafe(
                Progress(
                    deployment_id=dep_id,
                    stage=stage,
                    fraction=min(max(fraction, 0.0), 1.0),
                    message=message[:500],
                )
            )

        def fail(reason: str, detail: str) -> None:
            log.error("deployment %s failed: %s: %s", dep_id, reason, detail)
            self._emit(
                state,
                Result(
                    deployment_id=dep_id,
                    seq=terminal_seq,
                    kind=RESULT_FAILED,
                    data={"reason": reason, "detail": detail[:2000]},
                ),
                finished=True,
            )

        refused = self._check_trust(deploy)
        if refused is not None:
            fail(*refused)
            return
        model = self.artifacts_dir / f"{manifest.artifact_id}-{manifest.sha256[:16]}.onnx"
        eval_set = None
        log.info("deployment %s: manifest signature verified", dep_id)
        try:
            progress("downloading", 0.0, manifest.name)
            log.info(
                "deployment %s: downloading %s (%d bytes)", dep_id, manifest.name, manifest.size
            )
            download(
                server_url(self.config.server, deploy.artifact_url),
                model,
                credential=self.config.credential,
                ssl_context=self._ssl_context(),
                size=manifest.size,
                sha256=manifest.sha256,
                on_progress=lambda got, total: progress(
                    "downloading", got / max(total, 1), f"{got}/{total} bytes"
                ),
            )
            log.info(
                "deployment %s: downloaded %d bytes, size and sha256 %s… verified",
                dep_id,
                manifest.size,
                manifest.sha256[:12],
            )
            if settings.accuracy and deploy.eval_url and manifest.eval_sha256:
                eval_set = self.artifacts_dir / f"{manifest.artifact_id}-eval.npz"
                download(
                    server_url(self.config.server, deploy.eval_url),
                    eval_set,
                    credential=self.config.credential,
                    ssl_context=self._ssl_context(),
                    size=manifest.eval_size or 0,
                    sha256=manifest.eval_sha256,
                )
                log.info(
                    "deployment %s: evaluation set downloaded (%d bytes), sha256 verified",
                    dep_id,
                    manifest.eval_size or 0,
                )
        except VerificationError as exc:
            fail(exc.reason, str(exc))
            return
        except DownloadError as exc:
            fail(FAIL_DOWNLOAD, str(exc))
            return
        if dep_id in self._cancelled:
            fail(FAIL_CANCELLED, "the deployment was cancelled; stopped after its download")
            return
        progress("verifying", 1.0, "size, sha256 and signature verified")
        decoded_dir: Path | None = None
        decode: dict[str, Any] = {}
        if manifest.format == FORMAT_CONTAINER:
            # Decode before anything runs: a container the decoder refuses is reported as
            # decode_failed and never benchmarked.
            decoded_dir = self.artifacts_dir / f"{manifest.artifact_id}-{manifest.sha256[:16]}.d"
            shutil.rmtree(decoded_dir, ignore_errors=True)  # an interrupted earlier run's
            progress("verifying", 1.0, "decoding the compressed container")
            try:
                decoded = decode_container_isolated(model, decoded_dir, caps=DecodeCaps())
            except ContainerError as exc:
                shutil.rmtree(decoded_dir, ignore_errors=True)
                model.unlink(missing_ok=True)
                if eval_set is not None:
                    eval_set.unlink(missing_ok=True)
                fail(FAIL_DECODE, str(exc))
                return
            decode = {
                "decode_ms": decoded.decode_seconds * 1000.0,
                "decode_peak_rss_mb": decoded.peak_rss_bytes / 2**20,
                "container_bytes": decoded.container_bytes,
                "onnx_bytes": decoded.onnx_bytes,
            }
            log.info(
                "deployment %s: decoded a %d-byte container into a %d-byte ONNX in %.1f ms "
                "(peak RSS %.1f MB)",
                dep_id,
                decoded.container_bytes,
                decoded.onnx_bytes,
                decode["decode_ms"],
                decode["decode_peak_rss_mb"],
            )
            container_path, model = model, decoded.onnx_path
        try:
            skip = {s - 1 for s in done if s <= len(settings.batch_sizes)}
            log.info(
                "deployment %s: benchmark started (batch sizes %s)",
                dep_id,
                [b for i, b in enumerate(settings.batch_sizes) if i not in skip],
            )
            for index, data in latency_runs(
                model, settings, on_progress=progress, skip=skip, eval_set=eval_set
            ):
                seq = result_seq(settings, RESULT_LATENCY, index)
                log.info(
                    "deployment %s: batch %s: p50 %.3f ms, p90 %.3f ms, %.1f samples/s",
                    dep_id,
                    data.get("batch_size"),
                    float(data.get("p50_ms") or 0.0),
                    float(data.get("p90_ms") or 0.0),
                    float(data.get("throughput") or 0.0),
                )
                if "fps_e2e" in data:
                    log.info(
                        "deployment %s: batch %s: detector %.1f FPS network alone, %.1f FPS end "
                        "to end (decode + NMS, p50 %.3f ms)",
                        dep_id,
                        data.get("batch_size"),
                        float(data["fps"]),
                        float(data["fps_e2e"]),
                        float(data["e2e_p50_ms"]),
                    )
                data.update(decode)
                self._emit(
                    state, Result(deployment_id=dep_id, seq=seq, kind=RESULT_LATENCY, data=data)
                )
            accuracy_seq = result_seq(settings, RESULT_ACCURACY)
            if eval_set is not None and accuracy_seq not in done:
                progress("evaluating", 0.0, "accuracy on the evaluation set")
                data = accuracy_check(model, eval_set, settings, on_progress=progress)
                if data.get("task") == TASK_DETECTION:
                    log.info(
                        "deployment %s: mAP@0.5 %.4f, mAP@0.5:0.95 %.4f (%s images, %s boxes)",
                        dep_id,
                        float(data["map50"]),
                        float(data["map50_95"]),
                        data.get("samples"),
                        data.get("boxes"),
                    )
                else:
                    log.info(
                        "deployment %s: accuracy top-1 %.2f %% (%s of %s images)",
                        dep_id,
                        float(data.get("top1_pct") or 0.0),
                        data.get("correct"),
                        data.get("samples"),
                    )
                self._emit(
                    state,
                    Result(deployment_id=dep_id, seq=accuracy_seq, kind=RESULT_ACCURACY, data=data),
                )
        except DeploymentCancelled:
            fail(FAIL_CANCELLED, "the deployment was cancelled; stopped before its next step")
            return
        except Exception as exc:
            fail(FAIL_BENCHMARK, f"{type(exc).__name__}: {exc}")
            return
        finally:
            if decoded_dir is not None:
                shutil.rmtree(decoded_dir, ignore_errors=True)
                model = container_path
        self._emit(
            state,
            Result(
                deployment_id=dep_id,
                seq=terminal_seq,
                kind=RESULT_COMPLETE,
                data={
                    "latency_results": len(settings.batch_sizes),
                    "accuracy": eval_set is not None,
                    **decode,
                },
            ),
            finished=True,
        )
        log.info(
            "deployment %s finished: %d latency result(s)%s",
            dep_id,
            len(settings.batch_sizes),
            ", accuracy measured" if eval_set is not None else "",
        )
        for path in (model, eval_set):
            if path is not None:
                path.unlink(missing_ok=True)
