"""``edgeslim-agent``: enroll this device, run the agent, or show its status."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from pathlib import Path

from edgeslim_agent import __version__
from edgeslim_agent.config import AgentConfig, ConfigError, default_state_dir
from edgeslim_agent.connection import Agent, AgentStop
from edgeslim_agent.download import UnsafeURLError, no_redirect_opener
from edgeslim_agent.tls import (
    TLSError,
    check_scheme,
    client_context,
    fetch_pinned_cert,
    normalize_fingerprint,
)

ENROLL_PATH = "/api/v1/agent/enroll"


def enroll(
    server: str,
    code: str,
    state_dir: Path,
    *,
    fingerprint: str = "",
    insecure_http: bool = False,
    timeout: float = 30.0,
) -> AgentConfig:
    """Trade a one-time enrollment code for this device's credential and store it (0600).

    With ``fingerprint`` the server's certificate is checked before anything is sent, and kept
    as the only certificate the agent trusts from then on.
    """
    from edgeslim_agent.facts import collect
    from edgeslim_agent.trust import TrustedKey, TrustError, TrustStore

    server = server.rstrip("/")
    https = urllib.parse.urlsplit(server).scheme == "https"
    pinned, pem = "", ""
    try:
        check_scheme(server, insecure_http=insecure_http)
        if fingerprint and not https:
            raise TLSError("--fingerprint pins an https:// server's certificate")
        if fingerprint:
            pinned = normalize_fingerprint(fingerprint)
            pem = fetch_pinned_cert(server, pinned, timeout=timeout)
    except TLSError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot reach {server}: {exc}") from exc
    body = json.dumps(
        {"code": code.strip(), "agent_version": __version__, "facts": asdict(collect())}
    ).encode()
    request = urllib.request.Request(
        server + ENROLL_PATH,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    opener = no_redirect_opener(client_context(pem) if https else None)
    try:
        with opener.open(request, timeout=timeout) as response:
            answer = json.loads(response.read(64 * 1024))
    except urllib.error.HTTPError as exc:
        detail = exc.read(4096).decode("utf-8", "replace")
        raise ConfigError(f"enrollment refused (HTTP {exc.code}): {detail}") from exc
    except urllib.error.URLError as exc:
        raise ConfigError(f"cannot reach {server}: {exc.reason}") from exc
    except UnsafeURLError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        keys = [TrustedKey.from_dict(k) for k in answer.get("signing_keys", [])]
    except TrustError as exc:
        raise ConfigError(f"the server sent a malformed signing key: {exc}") from exc
    config = AgentConfig(
        server=server,
        device_id=int(answer["device_id"]),
        device_name=str(answer["device_name"]),
        credential=str(answer["credential"]),
        server_public_key=str(answer["server_public_key"]),
        tls_fingerprint=pinned,
        tls_cert=pem,
    )
    config.save(state_dir)
    store = TrustStore(keys)
    if not store.keys:  # a server from before key ids: trust the one key it handed over
        store = TrustStore.load(state_dir, enrolled_key=config.server_public_key)
    store.save(state_dir)
    return config


def run(state_dir: Path, *, insecure_http: bool = False) -> int:
    config = AgentConfig.load(state_dir)
    try:
        check_scheme(config.server, insecure_http=insecure_http)
    except TLSError as exc:
        raise ConfigError(str(exc)) from exc
    agent = Agent(config, state_dir)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, agent.stop)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
                pass
        try:
            await agent.run()
        except AgentStop as exc:
            logging.getLogger("edgeslim.agent").error("%s", exc)
            return exc.exit_code
        return 0

    return asyncio.run(main())


def status(state_dir: Path) -> int:
    config = AgentConfig.load(state_dir)
    from edgeslim_agent.outbox import Outbox

    print(f"server:     {config.server}")
    if config.tls_fingerprint:
        from edgeslim_agent.tls import display_fingerprint

        print(f"pinned TLS: {display_fingerprint(config.tls_fingerprint)}")
    print(f"device:     {config.device_name} (id {config.device_id})")
    print(f"state dir:  {state_dir}")
    print(f"unacknowledged results: {len(Outbox(state_dir / 'outbox'))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeslim-agent",
        description="EdgeSlim edge agent: benchmarks deployed ONNX models on this device.",
    )
    parser.add_argument("--version", action="version", version=f"edgeslim-agent {__version__}")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the credential and outbox live (default: ~/.config/edgeslim-agent)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow a plain http:// server (loopback development only: the credential and "
        "the artifacts travel in clear)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_enroll = sub.add_parser("enroll", help="trade a one-time code for this device's credential")
    p_enroll.add_argument(
        "--server", required=True, help="the studio's URL, e.g. https://studio.local:8443"
    )
    p_enroll.add_argument(
        "--fingerprint",
        default="",
        help="the sha256 of the studio's TLS certificate, as the enrollment page shows it "
        "(sha256:AB:CD:...); checked before anything is sent, then pinned",
    )
    p_enroll.add_argument("--code", required=True, help="the enrollment code shown in the browser")
    sub.add_parser("run", help="connect and serve deployments until stopped")
    sub.add_parser("status", help="show the enrolled identity and the outbox")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    state_dir: Path = args.state_dir or default_state_dir()
    try:
        if args.command == "enroll":
            config = enroll(
                args.server,
                args.code,
                state_dir,
                fingerprint=args.fingerprint,
                insecure_http=args.insecure_http,
            )
            print(
                f"enrolled as {config.device_name!r} (device {config.device_id}); "
                f"credential stored in {state_dir / 'credential.json'}"
            )
            return 0
        if args.command == "run":
            return run(state_dir, insecure_http=args.insecure_http)
        return status(state_dir)
    except ConfigError as exc:
        print(f"edgeslim-agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
