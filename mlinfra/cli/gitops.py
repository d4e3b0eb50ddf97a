"""`mlinfra preview`, `mlinfra promote` and `mlinfra policy`: GitOps for a platform project (stacks/).

Exit codes of `mlinfra preview`: 0 the plan is safe to apply; 1 it has breaking model changes, mandatory policy
violations or (with --refresh) drift; 2 the preview could not run (bad stack name or config, engine error).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlinfra.gitops import plan
from mlinfra.gitops.config import policy_pack_config
from mlinfra.gitops.stacks import POLICY_PACK, GitOpsError, Project, load_records, preview, promote, up


def _project(args: argparse.Namespace) -> Project:
    folder = args.dir or ("." if Path("Pulumi.yaml").exists() else "stacks")
    return Project(folder)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_preview(args: argparse.Namespace) -> int:
    if args.from_events:
        summary = plan.summarize(load_records(Path(args.from_events)), args.stack or "stack", args.project)
    else:
        project = _project(args)
        stack = args.stack or _only_stack(project)
        _stderr(f"previewing {project.name}/{stack} …")
        summary = preview(project, stack, Path(args.events) if args.events else None, _stderr, args.refresh)
    md = plan.render_for_comment(summary)
    if args.markdown:
        Path(args.markdown).write_text(md)
    if args.json:
        Path(args.json).write_text(plan.dumps(summary))
    print(md, end="")
    return summary.exit_code()


def _only_stack(project: Project) -> str:
    files = list(project.files())
    if len(files) != 1:
        raise GitOpsError(f"--stack is required: {project.dir} has stacks {', '.join(files) or '(none)'}")
    return files[0]


def cmd_up(args: argparse.Namespace) -> int:
    project = _project(args)
    res = up(project, args.stack, say=print, refresh=args.refresh)
    print(f"{project.name}/{args.stack}: {res.summary.result}, {dict(res.summary.resource_changes or {})}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    project = _project(args)
    diff = promote(
        project,
        args.source,
        args.target,
        models=args.model or None,
        copy=args.copy,
        write=not args.dry_run,
        say=_stderr,
    )
    if not diff:
        print(f"{args.target} already pins what {args.source} runs: nothing to change")
        return 0
    print(diff, end="")
    print(
        f"{'would write' if args.dry_run else 'wrote'} Pulumi.{args.target}.yaml: review it with "
        f"`mlinfra preview --stack {args.target}`, then commit"
    )
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    if args.policy_command == "path":
        print(POLICY_PACK)
        return 0
    project = _project(args)
    policy = project.policy(args.stack)
    if policy is None:
        raise GitOpsError(
            f"stack {args.stack} has no platform.policy section nor an mlinfra:policy config: the pack is off there"
        )
    print(json.dumps(policy_pack_config(policy), indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preview",
        help="preview a stack and summarize it in model terms (markdown for pull requests, JSON)",
        description="Runs `pulumi preview` (with the policy pack when the stack's config enables it) and renders "
        "model versions, signatures, image digests, endpoint traffic and rollout steps, edge targets and policy "
        "violations; with --refresh, drift (what changed outside Pulumi). Exit code: 0 safe, 1 breaking changes, "
        "violations or drift, 2 the preview failed.",
    )
    p.add_argument(
        "--refresh",
        action="store_true",
        help="read every resource from the real world first and report drift (a scheduled job's drift alarm)",
    )
    p.add_argument("--stack", help="stack name (default: the only Pulumi.<stack>.yaml)")
    p.add_argument("--dir", help="the project folder (default: . if it has Pulumi.yaml, else stacks/)")
    p.add_argument("--markdown", metavar="FILE", help="also write the markdown summary to FILE")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument(
        "--events", metavar="FILE", help="save the engine events the summary was made from (JSONL)"
    )
    p.add_argument("--from-events", metavar="FILE", help="render a saved --events FILE instead of previewing")
    p.add_argument("--project", default="mlinfra-platform", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser(
        "up",
        help="apply a stack: preview first, refuse what its policy pack blocks, then `pulumi up` with the pack",
    )
    p.add_argument("--stack", required=True)
    p.add_argument("--dir", help="the project folder (default: . if it has Pulumi.yaml, else stacks/)")
    p.add_argument("--refresh", action="store_true", help="read the real world first: repairs drift")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "promote",
        help="pin the exact model versions and image digests one stack runs in another stack's config",
    )
    p.add_argument("--from", dest="source", required=True, metavar="STACK")
    p.add_argument("--to", dest="target", required=True, metavar="STACK")
    p.add_argument(
        "--model", action="append", metavar="NAME", help="only this model (repeatable; default: all)"
    )
    p.add_argument(
        "--copy",
        action="store_true",
        help="copy missing models/images into the target's registries (verified)",
    )
    p.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    p.add_argument("--dir", help="the project folder (default: . if it has Pulumi.yaml, else stacks/)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("policy", help="the mlinfra policy pack: its folder, or a stack's pack config")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    q = psub.add_parser("path", help="print the pack's folder (for pulumi preview --policy-pack)")
    q.set_defaults(func=cmd_policy)
    q = psub.add_parser("config", help="print a stack's --policy-pack-config JSON")
    q.add_argument("--stack", required=True)
    q.add_argument("--dir")
    q.set_defaults(func=cmd_policy)
