"""Command line: run the gateway, or check configuration files before a client relies on them.

`serve` is the default so `uvx agent-mcp-gateway` in a client's MCP settings just starts the
gateway; the other commands print to the terminal and never show a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_mcp_gateway import __version__, config
from agent_mcp_gateway.settings import Settings, SettingsError, env_name, load_settings

if TYPE_CHECKING:
    from agent_mcp_gateway.access.policy import PolicyEngine

PROG = "agent-mcp-gateway"
# Packaged example -> the name it gets when written (package data globs skip dotfiles).
EXAMPLES = {
    "mcp.json": config.MCP_CONFIG_NAME,
    "mcp-gateway-rules.json": config.RULES_NAME,
}
# What a command of the example servers needs, when it is not on PATH.
INSTALL_HINTS = {
    "mcp-server-time": "pip install mcp-server-time (or: uv tool install mcp-server-time)",
    "npx": "Node.js 18 or newer with npm (Debian/Ubuntu: apt-get install nodejs npm)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command; the return value is the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return status


def _parser() -> argparse.ArgumentParser:
    # SUPPRESS lets the serve options sit both before and after `serve` without one
    # position's default overwriting what was given at the other.
    serve_options = argparse.ArgumentParser(add_help=False)
    serve_options.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="enable the get_gateway_status tool (sets GATEWAY_DEBUG=1)",
    )
    serve_options.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default=argparse.SUPPRESS,
        help="stdio for a local client, http for a service (sets GATEWAY_TRANSPORT)",
    )
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument(
        "--mcp-config",
        type=_path,
        metavar="PATH",
        help=f"servers file (default: ${config.MCP_CONFIG_ENV}, ./{config.MCP_CONFIG_NAME}, "
        f"then ~/.config/{PROG}/)",
    )
    files.add_argument(
        "--rules",
        type=_path,
        metavar="PATH",
        help=f"rules file (default: ${config.RULES_ENV}, ./{config.RULES_NAME}, then ~/.config/{PROG}/)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MCP gateway: per-agent policies over many downstream MCP servers.",
        parents=[serve_options],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.set_defaults(run=_serve)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[serve_options], help="run the gateway (the default)")
    serve.set_defaults(run=_serve)

    validate = commands.add_parser(
        "validate",
        parents=[files],
        help="check both configuration files and the GATEWAY_* environment, and show warnings",
    )
    validate.add_argument("--settings", action="store_true", help="also print the effective settings")
    validate.set_defaults(run=_validate)

    token = commands.add_parser(
        "token",
        parents=[files],
        help="make an API token for an agent and print the hash for the rules file",
        description="Prints the new token once on stdout (store it where the client reads its "
        "secrets) and the sha256: line for agents.AGENT.tokens on stderr.",
    )
    token.add_argument("agent", metavar="AGENT")
    token.add_argument(
        "--write",
        action="store_true",
        help="add the hash to the rules file (atomically, keeping its other content)",
    )
    token.set_defaults(run=_token)

    check = commands.add_parser(
        "check-policy",
        parents=[files],
        help="show whether an agent may use a server or tool, and which rule decides",
        description="Exit status: 0 allowed, 1 denied or unknown agent, 2 unusable files. "
        "An empty AGENT applies the missing-agent_id defaults.",
    )
    check.add_argument("agent", metavar="AGENT")
    check.add_argument("server", metavar="SERVER")
    check.add_argument("tool", metavar="TOOL", nargs="?")
    check.set_defaults(run=_check_policy)

    init = commands.add_parser("init", help="write commented example configuration files (never overwrites)")
    init.add_argument(
        "--dir",
        type=_path,
        default=None,
        metavar="DIR",
        help=f"where to write them (default: ~/.config/{PROG}/)",
    )
    init.set_defaults(run=_init)
    _add_audit_commands(commands)
    _add_tools_commands(commands, files)
    _add_auth_commands(commands, files)
    return parser


def _serve(args: argparse.Namespace) -> int:
    # The flags are the environment variables' equivalents; set there, a Granian worker sees
    # them too when it builds its settings.
    if getattr(args, "debug", False):
        os.environ["GATEWAY_DEBUG"] = "1"
    transport = getattr(args, "transport", None)
    if transport:
        os.environ["GATEWAY_TRANSPORT"] = transport
    settings = _settings()
    if settings is None:
        return 2
    # Imported here so the other commands start fast and work without the server stack.
    from agent_mcp_gateway.run.serve import run

    return run(settings)


def _settings() -> Settings | None:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return None


def _load(args: argparse.Namespace, settings: Settings | None = None) -> config.GatewayConfig | None:
    settings = settings or _settings()
    if settings is None:
        return None
    try:
        return config.load(args.mcp_config or settings.mcp_config, args.rules or settings.rules)
    except config.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _validate(args: argparse.Namespace) -> int:
    from agent_mcp_gateway.access.identity import identity_problem
    from agent_mcp_gateway.access.policy import PolicyEngine

    settings = _settings()
    if settings is None:
        return 1
    loaded = _load(args, settings)
    if loaded is None:
        return 1
    problem = identity_problem(settings, loaded.rules)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    print(f"OK: {_count(len(loaded.servers), 'server')}, {_count(len(loaded.rules.agents), 'agent')}")
    print(f"  servers file: {loaded.mcp_path}")
    print(f"  rules file:   {loaded.rules_path}")
    if args.settings:
        print("settings:")
        for name, value in settings.model_dump(mode="json").items():
            print(f"  {env_name(name)}={_shown(value)}")
    engine = PolicyEngine(loaded.rules, settings.default_agent)
    for warning in [*loaded.warnings, *_reachability_warnings(loaded, engine)]:
        print(f"warning: {warning}")
    return 0


def _shown(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _reachability_warnings(loaded: config.GatewayConfig, engine: PolicyEngine) -> list[str]:
    """Set-ups that load but cannot work: a command not on PATH, no agents, an agent with
    access to nothing."""
    warnings = [
        f"mcpServers.{name}.command: {server.command!r} is not found on PATH"
        + (f" (install: {INSTALL_HINTS[server.command]})" if server.command in INSTALL_HINTS else "")
        for name, server in loaded.servers.items()
        if server.command and shutil.which(server.command) is None
    ]
    if not loaded.rules.agents:
        warnings.append("agents: the rules file defines no agent, so every request is refused")
    # An agent with no allow rules is locked out on purpose (a deny-all default, say).
    warnings += [
        f"agents.{agent}: this agent can reach none of the configured servers"
        for agent, rules in loaded.rules.agents.items()
        if rules.allow.servers and not engine.visible_servers(agent, list(loaded.servers))
    ]
    return warnings


def _token(args: argparse.Namespace) -> int:
    from agent_mcp_gateway.access.credentials import new_token, token_hash

    loaded = _load(args)
    if loaded is None:
        return 2
    if args.agent not in loaded.rules.agents:
        print(f"error: agent '{args.agent}' is not in {loaded.rules_path}", file=sys.stderr)
        return 1
    token = new_token()
    line = token_hash(token)
    if args.write:
        try:
            _add_token_hash(loaded.rules_path, args.agent, line)
        except (OSError, ValueError) as exc:
            print(f"error: cannot update {loaded.rules_path}: {exc}", file=sys.stderr)
            return 1
        print(f"added to agents.{args.agent}.tokens in {loaded.rules_path}", file=sys.stderr)
    else:
        print(f'add to agents.{args.agent}.tokens in {loaded.rules_path}: "{line}"', file=sys.stderr)
    print(
        "the token below is shown once; give it to the client as 'Authorization: Bearer <token>'",
        file=sys.stderr,
    )
    print(token)
    return 0


def _add_token_hash(path: Path, agent: str, line: str) -> None:
    """Append `line` to the agent's tokens, rewriting the file atomically (a temporary file in
    the same folder, then a rename) so a watching gateway never reads half a file."""
    document = json.loads(path.read_text(encoding="utf-8"))
    tokens = document["agents"][agent].setdefault("tokens", [])
    if not isinstance(tokens, list):
        raise ValueError(f"agents.{agent}.tokens is not a list")
    tokens.append(line)
    mode = path.stat().st_mode & 0o777
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2, ensure_ascii=False)
            out.write("\n")
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _check_policy(args: argparse.Namespace) -> int:
    # Deferred like serve's: the error types pull in the MCP SDK, which takes a second to load.
    from agent_mcp_gateway.access.policy import PolicyEngine
    from agent_mcp_gateway.errors import InvalidAgentId

    settings = _settings()
    loaded = _load(args, settings) if settings else None
    if settings is None or loaded is None:
        return 2
    engine = PolicyEngine(loaded.rules, settings.default_agent)
    try:
        agent = engine.resolve_agent(args.agent)
    except InvalidAgentId as exc:
        print(f"{exc.name}: {exc.fields['reason']}")
        return 1
    if agent != args.agent:
        print(f"(no agent_id given: acting as agent '{agent}')")
    if args.server not in loaded.servers:
        print(f"note: server '{args.server}' is not in {loaded.mcp_path}", file=sys.stderr)
    decision = engine.decide(agent, args.server, args.tool)
    print(f"{'ALLOW' if decision.allowed else 'DENY'} {decision.rule}")
    return 0 if decision.allowed else 1


def _init(args: argparse.Namespace) -> int:
    directory: Path = (args.dir or config.user_config_dir()).absolute()
    examples = resources.files("agent_mcp_gateway") / "examples"
    written = 0
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for source, name in EXAMPLES.items():
            target = directory / name
            text = (examples / source).read_text(encoding="utf-8")
            try:
                with target.open("x", encoding="utf-8") as out:  # "x": never overwrite
                    out.write(text)
            except FileExistsError:
                print(f"exists, not overwritten: {target}")
                continue
            print(f"wrote {target}")
            written += 1
    except OSError as exc:
        print(f"error: cannot write to {directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not written:
        return 1
    if directory.resolve() not in (Path.cwd().resolve(), config.user_config_dir().resolve()):
        print(
            f"The gateway looks in the current directory and ~/.config/{PROG}/; point it here "
            f"with {config.MCP_CONFIG_ENV} and {config.RULES_ENV}."
        )
    _first_start_notes(directory / config.MCP_CONFIG_NAME)
    print(f"Edit them, then check them with: {PROG} validate")
    return 0


def _first_start_notes(mcp_path: Path) -> None:
    """What the servers file needs before its servers work: commands to install, placeholder
    URLs. The gateway starts without them; those servers are reported unavailable."""
    try:
        servers = config.load_mcp_config(mcp_path).mcpServers
    except (config.ConfigError, OSError):
        return  # an existing file of the user's that does not load: `validate` says why
    notes = [
        f"  {name}: {server.command!r} is not on PATH: "
        f"{INSTALL_HINTS.get(server.command, 'install it, or remove this server')}"
        for name, server in servers.items()
        if server.command and shutil.which(server.command) is None
    ]
    notes += [
        f"  {name}: {server.command} fetches {_package(server.args)} at its first start (needs the "
        "network; the server is reported down until it is there)"
        for name, server in servers.items()
        if server.command in ("npx", "uvx") and shutil.which(server.command) is not None
    ]
    notes += [
        f"  {name}: {server.url} is a placeholder; put your server's URL there, or remove it"
        for name, server in servers.items()
        if server.url and ".example." in server.url
    ]
    if notes:
        print("Before these servers work:")
        print("\n".join(notes))
        print("  (the gateway starts without them: calls to them get SERVER_UNAVAILABLE)")


def _package(args: Sequence[str]) -> str:
    """The package an `npx`/`uvx` command line runs: its first argument that is not an option."""
    return next((arg for arg in args if not arg.startswith("-")), "its package")


def _add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="check audit log files")
    audit_commands = audit.add_subparsers(title="commands", metavar="COMMAND", required=True)
    verify = audit_commands.add_parser(
        "verify",
        help="check that audit files are whole JSON lines whose hash chain is unbroken",
        description="Give the files oldest first, e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl. "
        "Exit status: 0 intact, 1 a broken line (the first is shown), 2 unreadable files.",
    )
    verify.add_argument("files", nargs="+", type=_path, metavar="FILE")
    verify.set_defaults(run=_audit_verify)
    ref = audit_commands.add_parser(
        "ref",
        help="print what audit lines record of a session id (they never hold the id itself)",
        description="Find a known session's lines: grep the printed reference in the audit files.",
    )
    ref.add_argument("session_id", metavar="SESSION_ID")
    ref.set_defaults(run=_audit_ref)


def _audit_ref(args: argparse.Namespace) -> int:
    from agent_mcp_gateway.observe.audit import session_ref

    print(session_ref(args.session_id))
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    import io

    from agent_mcp_gateway.observe.audit import GENESIS, checkpoints, verify

    # A file name may hold bytes stdout's encoding cannot show: print them escaped, no traceback.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        check = verify(args.files)
    except OSError as exc:
        print(f"error: cannot read {exc.filename or 'an audit file'}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if check.problem:
        print(f"BROKEN: {check.problem}")
        print(f"intact lines before it: {check.lines}")
        return 1
    print(f"OK: {_count(check.lines, 'line')}")
    if check.lines:
        # The ends of the chain: kept elsewhere, they show lines cut from either end.
        first = check.first_prev_hash
        if first == GENESIS:
            print("chain starts at: genesis")
        else:
            rotated = checkpoints(args.files[-1]).get(first or "")
            if rotated is None:
                print(f"chain starts at: {first} (an earlier file; no rotation checkpoint explains it)")
            else:
                print(
                    f"chain starts at: {first} (a file of {_count(rotated.file_lines, 'line')} "
                    f"rotated away at {rotated.rotated_at})"
                )
        print(f"last line hash:  {check.last_hash}")
    return 0


def _add_tools_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], files: argparse.ArgumentParser
) -> None:
    tools = commands.add_parser(
        "tools",
        help="pinned tool definitions (servers with pin_tools): what is pinned and quarantined",
        description="The pins file is the one a gateway with the same GATEWAY_* settings uses: "
        "next to GATEWAY_AUDIT_LOG, else in the user's state directory.",
    )
    tools_commands = tools.add_subparsers(title="commands", metavar="COMMAND", required=True)
    status = tools_commands.add_parser(
        "status",
        parents=[files],
        help="list pinned and quarantined tools per server, with short hashes",
        description="Exit status: 0 nothing quarantined, 1 a tool is quarantined, 2 unusable "
        "settings or pins file.",
    )
    status.add_argument(
        "--json", action="store_true", help="print JSON, with full hashes and candidate definitions"
    )
    status.set_defaults(run=_tools_status)
    approve = tools_commands.add_parser(
        "approve",
        parents=[files],
        help="accept a quarantined tool's current definition as its pin",
        description="A running gateway picks the approval up within seconds and shows the tool "
        "again. Exit status: 0 approved, 1 nothing to approve, 2 unusable settings or pins file.",
    )
    approve.add_argument("server", metavar="SERVER")
    approve.add_argument("tool", metavar="TOOL")
    approve.add_argument(
        "--hash",
        metavar="PREFIX",
        help="approve only if the quarantined definition's hash starts with PREFIX: at least 12 hex digits "
        "of it, or all of it (tools status shows both)",
    )
    approve.set_defaults(run=_tools_approve)


def _tools_status(args: argparse.Namespace) -> int:
    from agent_mcp_gateway.access.pins import PinsFileError, PinStore, pins_path, short

    settings = _settings()
    if settings is None:
        return 2
    store = PinStore(pins_path(settings))
    try:
        state = store.load()
    except PinsFileError as exc:
        print(f"error: {store.path}: {exc}", file=sys.stderr)
        return 2
    pinned = _pinned_servers(args, settings)
    names = sorted(set(state.servers) | (pinned or set()))
    quarantined = 0
    report: dict[str, object] = {}
    lines = [f"pins file: {store.path}"]
    for name in names:
        pins = state.servers.get(name, {})
        held = sorted(tool for tool, pin in pins.items() if pin.candidate)
        quarantined += len(held)
        setting = None if pinned is None else name in pinned
        report[name] = {
            "pin_tools": setting,
            "tools": {
                tool: {
                    "state": "quarantined" if pin.candidate else "pinned",
                    **pin.model_dump(exclude_none=True),
                }
                for tool, pin in sorted(pins.items())
            },
        }
        note = "" if setting is None else " (pin_tools on)" if setting else " (pin_tools off)"
        lines.append(f"{name}{note}: {_count(len(pins), 'tool')} pinned, {len(held)} quarantined")
        for tool, pin in sorted(pins.items()):
            if pin.candidate:
                lines.append(
                    f"  {tool}  QUARANTINED  pin {short(pin.pin)}  now {short(pin.candidate)}  "
                    f"since {pin.candidate_seen_at or '?'}"
                )
                described = str((pin.candidate_definition or {}).get("description", ""))
                lines.append(f"    now described as: {described[:160]!r}")
                lines.append(f"    approve: {PROG} tools approve {name} {tool}")
            else:
                lines.append(f"  {tool}  pinned  {short(pin.pin)}")
    if args.json:
        print(json.dumps({"file": str(store.path), "quarantined": quarantined, "servers": report}, indent=2))
    else:
        if not names:
            lines.append("no tools pinned yet")
        print("\n".join(lines))
    return 1 if quarantined else 0


def _pinned_servers(args: argparse.Namespace, settings: Settings) -> set[str] | None:
    """The servers with pin_tools on, when the servers file can be read (it is optional here:
    the pins file is what this command reports)."""
    try:
        path = config.discover(
            args.mcp_config or settings.mcp_config, config.MCP_CONFIG_ENV, config.MCP_CONFIG_NAME
        )
        servers = config.load_mcp_config(path).mcpServers
    except config.ConfigError as exc:
        print(f"note: {exc}; showing the pins file only", file=sys.stderr)
        return None
    return {name for name, server in servers.items() if server.pin_tools}


def _tools_approve(args: argparse.Namespace) -> int:
    from agent_mcp_gateway.access.pins import ApprovalError, PinsFileError, PinStore, pins_path, short

    settings = _settings()
    if settings is None:
        return 2
    store = PinStore(pins_path(settings))
    try:
        before = store.load().servers.get(args.server, {}).get(args.tool)
        approved = store.approve(args.server, args.tool, args.hash)
    except PinsFileError as exc:
        print(f"error: {store.path}: {exc}", file=sys.stderr)
        return 2
    except ApprovalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    was = f" (was {short(before.pin)})" if before else ""
    print(f"approved {args.server}/{args.tool}: pin {short(approved.pin)}{was}")
    return 0


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _add_auth_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], files: argparse.ArgumentParser
) -> None:
    auth = commands.add_parser(
        "auth",
        help="logins to downstream servers that need a person's consent (grant authorization_code)",
        description="Refresh tokens are stored encrypted with GATEWAY_CREDENTIALS_KEY in "
        "downstream-logins.json, next to the tool pins; a running gateway with the same settings "
        "uses them at once.",
    )
    auth_commands = auth.add_subparsers(title="commands", metavar="COMMAND", required=True)
    login = auth_commands.add_parser(
        "login",
        parents=[files],
        help="sign in to SERVER (authorization code with PKCE, loopback redirect): prints the URL to open",
    )
    login.add_argument("server", metavar="SERVER")
    login.add_argument(
        "--agent", default=None, help="the agent the login is for (default: the gateway's own)"
    )
    login.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the sign-in (300)")
    login.set_defaults(run=_auth_login)
    status = auth_commands.add_parser("status", parents=[files], help="list stored logins (never a token)")
    status.set_defaults(run=_auth_status)
    logout = auth_commands.add_parser(
        "logout", parents=[files], help="forget a login, revoking its refresh token where the server allows"
    )
    logout.add_argument("server", metavar="SERVER")
    logout.add_argument(
        "--agent", default=None, help="the agent the login is for (default: the gateway's own)"
    )
    logout.set_defaults(run=_auth_logout)


def _login_store(settings: Settings | None) -> Any:
    """The stored logins, or None after saying why (bad settings, or no key to open them)."""
    from agent_mcp_gateway.access.logins import LoginStore, logins_path

    if settings is None:
        return None
    if settings.credentials_key is None:
        print("error: set GATEWAY_CREDENTIALS_KEY (a Fernet key) to store logins", file=sys.stderr)
        return None
    return LoginStore(logins_path(settings), settings.credentials_key)


def _auth_login(args: argparse.Namespace) -> int:
    from agent_mcp_gateway.access.logins import GATEWAY, LoginStoreError
    from agent_mcp_gateway.downstream.login import LoginFailed, login

    settings = _settings()
    loaded = _load(args, settings) if settings is not None else None
    store = _login_store(settings)
    if loaded is None or store is None:
        return 2
    server = loaded.servers.get(args.server)
    if (
        server is None
        or server.url is None
        or server.auth is None
        or server.auth.oauth.grant != "authorization_code"
    ):
        print(
            f"error: {args.server!r} is not an HTTP server with auth.oauth grant authorization_code",
            file=sys.stderr,
        )
        return 2
    agent = args.agent or GATEWAY
    if args.agent is not None and args.agent not in loaded.rules.agents:
        print(f"error: no agent {args.agent!r} in the rules file", file=sys.stderr)
        return 2

    def show(url: str) -> None:
        print(f"Open this URL to sign in to {args.server} for {agent}:\n{url}", flush=True)

    try:
        saved = login(args.server, server.url, server.auth.oauth, agent, store, show, args.timeout)
    except (LoginFailed, LoginStoreError, OSError) as exc:
        print(f"error: login failed: {exc}", file=sys.stderr)
        return 1
    print(f"logged in: {saved.server} for {saved.agent} at {saved.issuer}")
    return 0


def _auth_status(args: argparse.Namespace) -> int:
    from agent_mcp_gateway.access.logins import LoginStoreError

    store = _login_store(_settings())
    if store is None:
        return 2
    try:
        logins = store.all()
    except LoginStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"logins file: {store.path}")
    for entry in sorted(logins, key=lambda e: (e.server, e.agent)):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.stored_at))
        print(f"{entry.server}\t{entry.agent}\t{entry.issuer}\tclient {entry.client_id}\tsince {when}")
    return 0


def _auth_logout(args: argparse.Namespace) -> int:
    from agent_mcp_gateway.access.logins import GATEWAY, LoginStoreError
    from agent_mcp_gateway.downstream.login import logout

    store = _login_store(_settings())
    if store is None:
        return 2
    agent = args.agent or GATEWAY
    try:
        removed = logout(store, args.server, agent)
    except (LoginStoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if removed is None:
        print(f"no login of {agent} for {args.server}", file=sys.stderr)
        return 1
    print(f"logged out: {args.server} for {agent}")
    return 0
