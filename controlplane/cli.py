"""The `controlplane` command: run | demo | validate | plan | apply | sync | drill | status | schema | policy | cost."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from controlplane.errors import ControlPlaneError
from controlplane.logs import LOG_FORMAT, OneLineFormatter
from controlplane.policy import Policy, PolicyError, json_schema, load_policy, validate_files
from controlplane.yamldoc import DocumentError

if TYPE_CHECKING:
    from chaos.drill import Drill
    from controlplane.cost.report import Scenario
    from controlplane.oneshot import OneShot
    from controlplane.reconciler import Outcome

log = logging.getLogger("controlplane")
PRICES_HELP = "a price sheet read after the shipped ones, overriding them figure by figure (repeatable)"
T = TypeVar("T")


def _setup_logging(level: str, path: Path | None = None) -> None:
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _token() -> str | None:
    token = os.environ.get("CONTROLPLANE_TOKEN", "").strip()
    file = os.environ.get("CONTROLPLANE_TOKEN_FILE")
    if not token and file:
        token = Path(file).read_text(encoding="utf-8").strip()
    return token or None


def cmd_validate(args: argparse.Namespace) -> int:
    problems = validate_files(args.files)
    for problem in problems:
        print(problem, file=sys.stderr)
    if any(not p.warning for p in problems):
        return 1
    print(f"{len(args.files)} policy file(s) valid")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json_schema())
    return 0


_REPLICA = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def replica_name(value: str) -> str:
    """A replica's name: how its peers, its vote and its leadership are known in etcd."""
    if not _REPLICA.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a replica name is 1-63 of a-z, 0-9 and -, not starting or ending with -"
        )
    return value


def default_replica_name() -> str:
    """The host name, lowered, with anything a replica name may not hold turned into -."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")[:63].strip("-")
    return name or "replica"


def cmd_run(args: argparse.Namespace) -> int:
    from controlplane.api import serve
    from controlplane.daemon import Daemon, DaemonConfig
    from controlplane.providers.factory import build_providers
    from controlplane.telemetry import setup_tracing

    _setup_logging(args.log_level)
    setup_tracing()
    policy = load_policy(args.policy)
    config = DaemonConfig(
        policy_path=Path(args.policy),
        state_dir=Path(args.state_dir),
        api_host=args.api_host,
        api_port=args.api_port,
        token=_token(),
        dry_run=args.dry_run,
        prices=tuple(Path(p) for p in args.prices),
        replica=args.replica,
    )
    if config.token is None:
        log.warning("no CONTROLPLANE_TOKEN set: the admin API is read-only")

    async def main() -> None:
        daemon = Daemon(config, policy, build_providers)
        await daemon.run([("api", partial(serve, daemon, config.api_host, config.api_port))])

    asyncio.run(main())
    return 0


def _survey_json(survey: OneShot, applied: list[Outcome] | None = None) -> str:
    data: dict[str, object] = {
        "plan": survey.plan.to_json(),
        "changes": [o.changes.to_json() | {"error": o.error} for o in survey.outcomes],
        "left_to_the_daemon": survey.in_process,
    }
    if applied is not None:
        data["applied"] = [{"provider": o.provider, "applied": o.applied, "error": o.error} for o in applied]
    return json.dumps(data, indent=2, sort_keys=True)


def _print_survey(survey: OneShot) -> None:
    for g in survey.plan:
        weights = ", ".join(f"{w.region}={w.weight}" for w in g.weights)
        print(f"{g.service} [{g.group}] {g.mode.value}: {weights}")
    for o in survey.outcomes:
        print(o.changes.render_text() + (f"\n  ! could not read current state: {o.error}" if o.error else ""))
    for name in survey.in_process:
        print(f"{name}: served by the daemon itself; `controlplane run` applies it")


def cmd_plan(args: argparse.Namespace) -> int:
    from controlplane.oneshot import plan_once

    policy = load_policy(args.policy)
    survey = asyncio.run(plan_once(policy, Path(args.state_dir)))
    if args.json:
        print(_survey_json(survey))
    else:
        _print_survey(survey)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from controlplane.oneshot import apply_once

    policy = load_policy(args.policy)

    async def confirm(survey: OneShot) -> bool:
        if not args.json:
            _print_survey(survey)
        if args.yes:
            return True
        if not sys.stdin.isatty():
            print("not applied: pass --yes to apply without a terminal to confirm on", file=sys.stderr)
            return False
        answer = await asyncio.to_thread(input, "apply these changes? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    survey, applied = asyncio.run(apply_once(policy, Path(args.state_dir), confirm, force=args.force))
    if args.json:
        print(_survey_json(survey, applied))
    elif applied is None and not any(o.changes for o in survey.outcomes):
        _print_survey(survey)
        print("nothing to apply")
    else:
        for o in applied or ():
            done = "applied" if o.applied else f"FAILED: {o.error}" if o.error else "no changes"
            print(f"{o.provider}: {done}")
    failed = [o for o in [*survey.outcomes, *(applied or ())] if o.error]
    return 2 if failed else (0 if applied is not None or not any(o.changes for o in survey.outcomes) else 1)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with urllib.request.urlopen(f"{args.api.rstrip('/')}/status", timeout=5) as response:
            data = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"controlplane: cannot reach the daemon at {args.api}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    now = time.time()
    print(
        f"ready: {'yes' if data['ready'] else 'NO'}  started {_when(data.get('started_at'), now)}"
        f"  last change {_when(data['last_change'], now)}"
    )
    for alert in data.get("alerts", ()):
        details = ", ".join(f"{k}={v}" for k, v in alert.items() if k not in ("alert", "impact"))
        print(
            f"  ALERT {alert['alert']}: {details}" + (f" ({alert['impact']})" if alert.get("impact") else "")
        )
    if coordination := data.get("coordination"):
        _print_coordination(coordination)
    for name, r in data["regions"].items():
        print(f"  {name:<12} {r['state']:<10} score {r['score']:.2f}  {'; '.join(r['reasons'])}")
    if cost := data.get("cost"):
        regions = ", ".join(
            f"{name} {c['per_hour']:,.2f} ({c['instances']} inst)" for name, c in cost["regions"].items()
        )
        print(
            f"  cost: {cost['per_hour']:,.2f} {cost['currency']}/h at {cost['tokens_out_per_s']:,.0f}"
            f" output tokens/s: {regions}"
        )
    for service, groups in data["services"].items():
        for group, g in groups.items():
            weights = ", ".join(f"{region}={w['weight']}" for region, w in g["weights"].items())
            print(f"  {service} [{group}] {g['mode']}: {weights}")
    for o in data.get("overrides", ()):
        scope = f" ({o['service']})" if o.get("service") else ""
        print(
            f"  override {o['action']} {o['region']}{scope} until {_when(o['until'], now)}: {o.get('reason', '')}"
        )
    return 0


def _print_coordination(c: dict[str, Any]) -> None:
    """Who leads, this replica's role, and how each replica sees each region."""
    leader = c["leader"] or "none"
    epoch = f", epoch {c['epoch']}" if c["epoch"] is not None else ""
    print(
        f"  replica {c['replica']}: {c['role'].upper()}  (leader {leader}{epoch}, {c['fenced']} writes fenced)"
    )
    if c["frozen"]:
        print(f"  FROZEN: {c['frozen']}")
    if c["etcd"]:
        print(f"  etcd: {c['etcd']}")
    quorum = c.get("quorum")
    if quorum:
        expected = f" of {quorum['expected']} expected" if quorum.get("expected") else ""
        print(
            f"  quorum: {len(quorum['live'])} live ({', '.join(quorum['live'])}){expected}, {quorum['needed']} needed"
        )
        for region, q in quorum["regions"].items():
            if q["note"]:
                print(f"    {region}: {q['note']}")
    for replica, vote in c.get("votes", {}).items():
        states = ", ".join(f"{region} {state}" for region, state in vote["states"].items())
        print(f"    vote {replica} ({vote['age']:.1f}s old): {states}")


def _when(ts: float | None, now: float) -> str:
    """A wall-clock time as a person reads it: local time and how long ago (or from now)."""
    if ts is None:
        return "never"
    delta = now - ts
    ago = f"{_span(abs(delta))} {'ago' if delta >= 0 else 'from now'}"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))} ({ago})"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def cmd_demo(args: argparse.Namespace) -> int:
    from controlplane.demo import run_demo

    if args.replicas > 1:
        from controlplane.replicas_demo import run_replicas_demo

        return asyncio.run(
            run_replicas_demo(Path(args.policy), Path(args.state_dir), args.replicas, view=not args.no_view)
        )
    return asyncio.run(
        run_demo(
            Path(args.policy),
            Path(args.state_dir),
            view=not args.no_view,
            haproxy=not args.no_haproxy,
            prices=[Path(p) for p in args.prices],
        )
    )


def cmd_sync(args: argparse.Namespace) -> int:
    from rich.console import Console

    from controlplane.weights.progress import QUIET, Bars, SyncProgress, summary
    from controlplane.weights.sync import SyncReport, sync_model

    policy = load_policy(args.policy)
    models = [m for m in policy.models if args.model is None or m.name == args.model]
    if not models:
        print(f"controlplane sync: no model {args.model!r} in the policy", file=sys.stderr)
        return 1

    async def everything(progress: SyncProgress) -> list[SyncReport]:
        reports = []
        for model in models:
            report = await sync_model(policy, model, dry_run=args.dry_run, progress=progress)
            reports.append(report)
            computed = " (manifest computed)" if report.manifest_computed else ""
            print(f"{report.model} {report.version}{computed}{' [dry run]' if report.dry_run else ''}")
            if report.error is not None:
                print(f"  FAILED: {report.error}")
            for d in report.destinations:
                plan = d.plan
                if plan.blocked is not None:
                    print(f"  {plan.region}: blocked ({plan.blocked})")
                    continue
                state = (
                    "current"
                    if plan.current
                    else "promoted"
                    if d.promoted
                    else "FAILED"
                    if d.failures
                    else "not current"
                )
                print(
                    f"  {plan.region}: copy {len(plan.copy)}, skip {len(plan.skip)}, repair {len(plan.repair)}, "
                    f"{d.bytes_copied} bytes copied: {state}"
                )
                for r in plan.repair:
                    print(f"    repair {r.entry.path}: {r.why}")
                for failure in d.failures:
                    print(f"    ! {failure}")
                if d.retention is not None:
                    for deleted in d.retention.deleted:
                        print(f"    deleted old version {deleted}")
                    for problem in d.retention.failures:
                        print(f"    warning: {problem}")
        return reports

    started = time.monotonic()
    if sys.stderr.isatty():
        with Bars(Console(stderr=True), capture_stdout=sys.stdout.isatty()) as bars:
            reports = asyncio.run(everything(bars))
    else:
        reports = asyncio.run(everything(QUIET))
    print(summary(reports, time.monotonic() - started))
    return 0 if all(r.ok for r in reports) else 1


def cmd_drill(args: argparse.Namespace) -> int:
    from chaos.drill import DrillError, load_drill
    from chaos.runner import catalogue

    files = [Path(f) for f in args.files] + (catalogue() if args.all else [])
    if not files:
        print("controlplane drill: name drill files, or --all for the catalogue", file=sys.stderr)
        return 2
    drills = []
    bad = False
    for file in files:
        try:
            drills.append(load_drill(file))
        except DrillError as exc:
            bad = True
            for problem in exc.problems:
                print(problem, file=sys.stderr)
    if bad:
        return 2
    return asyncio.run(_drills(drills, Path(args.report_dir), args.dry_run))


async def _drills(drills: list[Drill], report_dir: Path, dry_run: bool) -> int:
    """Each drill in turn, on a target of its own; refused drills stop everything before anything starts."""
    from chaos.report import DrillFigures, render_combined, write_combined
    from chaos.runner import DrillRefused, problems, run_drill, target_for

    targets = [target_for(d) for d in drills]
    refused = [(d, found) for d, t in zip(drills, targets, strict=True) if (found := problems(d, t))]
    if refused:
        for drill, found in refused:
            print(DrillRefused(drill.name, found), file=sys.stderr)
        return DrillRefused.exit_code
    if not dry_run:
        # The stack's own logs (the sim regions, the target) go beside the reports, not between the verdicts.
        await asyncio.to_thread(report_dir.mkdir, parents=True, exist_ok=True)
        _setup_logging("info", report_dir / "drill.log")
    figures: list[DrillFigures] = []
    failed = 0
    names: set[str] = set()
    for drill, target in zip(drills, targets, strict=True):
        name = drill.name if drill.name not in names else f"{drill.name}-{len(names) + 1}"
        names.add(name)
        try:
            outcome = await run_drill(drill, target, report_dir / name, dry_run=dry_run)
        except ControlPlaneError as exc:
            failed += 1
            print(f"{drill.name}: ERROR: {exc}")
            continue
        print(outcome.verdict())
        if dry_run:
            print("\n".join(outcome.schedule))
        if outcome.figures is not None:
            figures.append(outcome.figures)
        failed += not dry_run and not outcome.passed
    if len(figures) > 1:
        await asyncio.to_thread(write_combined, figures, report_dir / "summary.md")
        print()
        print(render_combined(figures), end="")
    return 1 if failed else 0


def cmd_from_terraform(args: argparse.Namespace) -> int:
    from controlplane import fromterraform as tf
    from controlplane.yamldoc import read_text

    outputs = tf.read_outputs(args.outputs)
    hidden = tf.secrets(outputs)
    if args.into is None:
        if args.write:
            print("controlplane policy from-terraform: --write needs --into POLICY", file=sys.stderr)
            return 2
        text, notes = tf.fragment(outputs)
        for note in notes:
            print(f"note: {tf.redact(note, hidden)}", file=sys.stderr)
        sys.stdout.write(tf.redact(text, hidden))
        return 0
    path = Path(args.into)
    filled = tf.fill_policy(read_text(path), str(path), outputs)
    for note in filled.notes:
        print(f"note: {tf.redact(note, hidden)}", file=sys.stderr)
    sys.stdout.write(tf.redact(filled.diff, hidden))
    for problem in filled.problems:
        print(tf.redact(str(problem), hidden), file=sys.stderr)
    if not filled.valid:
        print(f"{path}: not written: the result does not validate", file=sys.stderr)
        return 1
    if not filled.changed:
        print(f"{path}: already matches terraform's outputs", file=sys.stderr)
    elif args.write:
        tf.write_atomically(path, filled.text)
        print(f"{path}: written", file=sys.stderr)
    else:
        print(f"{path}: not written (pass --write)", file=sys.stderr)
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from rich.console import Console

    from controlplane.cost import view as costview
    from controlplane.cost.model import estimate
    from controlplane.cost.prices import check_fleets, load_prices, shipped_sheets
    from controlplane.cost.traffic import check_traffic, load_traffic

    problems: list[str] = []

    def loaded(load: Callable[[], T]) -> T | None:
        try:
            return load()
        except DocumentError as exc:
            problems.extend(str(p) for p in exc.problems)
            return None

    policy = loaded(partial(load_policy, args.policy))
    book = loaded(partial(load_prices, [*shipped_sheets(), *map(Path, args.prices)]))
    traffic = loaded(partial(load_traffic, Path(args.traffic)))
    if policy is not None and book is not None:
        problems.extend(f"{args.policy}: {p}" for p in check_fleets(policy, book))
    if policy is not None and traffic is not None:
        problems.extend(f"{args.traffic}: {p}" for p in check_traffic(policy, traffic))
    scenarios: list[Scenario] = []
    if policy is not None:
        try:
            scenarios = _scenarios(policy, args.scenario)
        except ValueError as exc:
            problems.append(str(exc))
    if problems or policy is None or book is None or traffic is None:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 2
    reports = [estimate(policy, book, traffic, s) for s in scenarios]
    if args.json:
        print(json.dumps(costview.to_json(reports), indent=2))
    else:
        # Piped, rich would fold the table at 80 columns: give it room for a row per line instead.
        console = Console(width=None if sys.stdout.isatty() else 200)
        costview.render(reports, console, explain_terms=args.explain)
    if args.chart:
        costview.write_chart(reports, Path(args.chart))
        print(f"chart: {args.chart}", file=sys.stderr)
    return 0


def _scenarios(policy: Policy, given: Sequence[str]) -> list[Scenario]:
    """The scenarios asked for, each region checked against the policy; none asked for: normal, then each
    region with a fleet down in turn."""
    from controlplane.cost.report import Scenario, ScenarioKind, parse_scenario

    fleets = [r.name for r in policy.regions if r.fleet is not None]
    if not given:
        return [Scenario(ScenarioKind.NORMAL), *(Scenario(ScenarioKind.REGION_DOWN, r) for r in fleets)]
    # A region without a fleet can still go down (its traffic moves to priced regions); only a fleet has spot.
    allowed = {ScenarioKind.REGION_DOWN: [r.name for r in policy.regions], ScenarioKind.SPOT_LOSS: fleets}
    scenarios = []
    for text in given:
        scenario = parse_scenario(text)
        names = allowed.get(scenario.kind)
        if names is not None and scenario.region not in names:
            which = "regions" if scenario.kind is ScenarioKind.REGION_DOWN else "regions with a fleet"
            known = ", ".join(names) or "none"
            raise ValueError(f"scenario {text!r}: no region {scenario.region!r} there ({which}: {known})")
        scenarios.append(scenario)
    return scenarios


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlplane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check policy files; FILE:LINE:COL: message per problem")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("schema", help="print the policy JSON Schema")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--policy", required=True)
    p.add_argument("--state-dir", default="state")
    p.add_argument("--api-host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, default=8080)
    p.add_argument("--dry-run", action="store_true", help="decide and diff, never apply")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--prices", action="append", default=[], metavar="FILE", help=PRICES_HELP)
    p.add_argument(
        "--replica",
        type=replica_name,
        default=default_replica_name(),
        help="this replica's name, unique among the plane's replicas (policy `coordination`); default: the host name",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("plan", help="probe once, decide, and print the change set without applying")
    p.add_argument("--policy", required=True)
    p.add_argument("--state-dir", default="state", help="where the daemon keeps its last plan")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("apply", help="probe once, decide, diff against the live providers, confirm, apply")
    p.add_argument("--policy", required=True)
    p.add_argument("--state-dir", default="state", help="where the daemon keeps its last plan")
    p.add_argument("--yes", action="store_true", help="apply without asking")
    p.add_argument("--force", action="store_true", help="apply what the safety gate refuses")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser("status", help="show a running daemon's regions and weights")
    p.add_argument("--api", default="http://127.0.0.1:8080")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("demo", help="the whole stack on loopback: 4 regions, DNS, HAProxy, daemon, live view")
    p.add_argument("--policy", default=str(Path(__file__).resolve().parent.parent / "policies" / "demo.yaml"))
    p.add_argument("--state-dir", default="state/demo")
    p.add_argument("--no-view", action="store_true", help="plain log lines instead of the live view")
    p.add_argument("--no-haproxy", action="store_true")
    p.add_argument(
        "--replicas",
        type=int,
        choices=range(1, 6),
        default=1,
        metavar="N",
        help="N replicas of the plane (2-5) on a local etcd, each with a knob that cuts it off; default 1",
    )
    p.add_argument("--prices", action="append", default=[], metavar="FILE", help=PRICES_HELP)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("sync", help="copy, verify and promote model weights into every region's bucket")
    p.add_argument("--policy", required=True)
    p.add_argument("--dry-run", action="store_true", help="print the plan; write nothing at all")
    p.add_argument("--model", help="only this model")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("drill", help="break the demo stack on purpose and report what clients saw")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--all", action="store_true", help="also every drill of the catalogue (chaos/drills)")
    p.add_argument("--dry-run", action="store_true", help="check the drills and print their schedules")
    p.add_argument("--report-dir", default="drill-reports", help="a folder per drill, summary.md for several")
    p.set_defaults(func=cmd_drill)
    p = sub.add_parser("cost", help="monthly cost per region, group and scenario, each figure with its sum")
    p.add_argument("--policy", required=True, help="a policy whose regions have fleets")
    p.add_argument(
        "--traffic", required=True, help="a traffic profile (requests/s by hour of week per group)"
    )
    p.add_argument("--prices", action="append", default=[], metavar="FILE", help=PRICES_HELP)
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="S",
        help="normal, region-down:REGION or spot-loss:REGION (repeatable; default: normal and each region down)",
    )
    p.add_argument("--json", action="store_true", help="the reports as JSON on stdout, nothing else")
    p.add_argument("--chart", metavar="FILE", help="a PNG: a bar per scenario, its categories stacked")
    p.add_argument("--explain", action="store_true", help="every term's formula and price pages")
    p.set_defaults(func=cmd_cost)
    p = sub.add_parser("policy", help="policy tools")
    policy_sub = p.add_subparsers(dest="policy_command", required=True)
    p = policy_sub.add_parser(
        "from-terraform",
        help="fill providers and buckets from `terraform output -json`; show the diff, validate, --write",
    )
    p.add_argument("outputs", metavar="OUTPUTS.json", help="`terraform output -json`, or - for stdin")
    p.add_argument("--into", metavar="POLICY", help="the policy to fill; without it, print the settings")
    p.add_argument("--write", action="store_true", help="write the filled policy back (atomically)")
    p.set_defaults(func=cmd_from_terraform)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ControlPlaneError as exc:
        print(f"controlplane {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # Cannot start: a port taken (another demo running?), a file that cannot be read.
        print(f"controlplane {args.command}: cannot start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
