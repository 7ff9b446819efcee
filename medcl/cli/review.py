"""``medcl review ...``: the review store from the command line (users, import, export, schema).

Every command takes ``--db URL`` (default ``$MEDCL_REVIEW_DB``, else the workspace's SQLite store
``<workspace>/review/review.db``) and ``--workspace``. The CLI acts as the local operator (an admin
with file access to the database); its audit entries carry the user name ``system``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from medcl.cli.common import add_workspace_arg
from medcl.errors import MedclError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="database URL (default: $MEDCL_REVIEW_DB, else <workspace>/review/review.db)",
    )
    add_workspace_arg(p)


def add_parser(sub: Any) -> None:
    group = sub.add_parser("review", help="the review store: users, import, export")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(dest="review_command", metavar="COMMAND")

    u = cmds.add_parser("add-user", help="add a reviewer or admin")
    u.add_argument("username")
    u.add_argument("--role", default="reviewer", choices=["reviewer", "admin"])
    how = u.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    how.add_argument("--password-env", metavar="VAR", help="read the password from env VAR")
    _common(u)
    u.set_defaults(func=_add_user)

    i = cmds.add_parser("import", help="import predictions.jsonl files")
    i.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    _common(i)
    i.set_defaults(func=_import)

    e = cmds.add_parser(
        "export",
        help="export reviews (csv/json), the corrections manifest or a MIL bags manifest",
        description=(
            "manifest: corrected cases as an image-set CSV; mil-manifest: accepted and corrected "
            "slide cases as a bags CSV for `medcl mil train --bags`. Corrections outside the "
            "allowed labels are left out and listed on stderr."
        ),
    )
    e.add_argument(
        "--format",
        dest="fmt",
        default="csv",
        choices=["csv", "json", "manifest", "mil-manifest"],
    )
    e.add_argument("--out", type=Path, required=True, help="file to write")
    e.add_argument(
        "--features",
        type=Path,
        default=None,
        help="mil-manifest: folder of <slide stem>.h5 bags for cases without artifacts.bag",
    )
    _common(e)
    e.set_defaults(func=_export)

    st = cmds.add_parser("settings", help="show or change project settings (blind review)")
    st.add_argument(
        "--blind-review",
        choices=["on", "off"],
        default=None,
        help="hide ground truth and others' reviews from reviewers until they submit",
    )
    _common(st)
    st.set_defaults(func=_settings)

    lb = cmds.add_parser("labels", help="correction labels admins add to a model's class map")
    lb.set_defaults(group_parser=lb)
    lbc = lb.add_subparsers(dest="labels_command", metavar="COMMAND")
    for name, helptext in (("add", "add a label"), ("remove", "remove an added label")):
        one = lbc.add_parser(name, help=helptext)
        one.add_argument("model", help="prediction model name (as in the worklist)")
        one.add_argument("label")
        _common(one)
        one.set_defaults(func=_labels_change, labels_action=name)
    lls = lbc.add_parser("list", help="list added labels")
    lls.add_argument("--model", default=None)
    _common(lls)
    lls.set_defaults(func=_labels_list)

    ls = cmds.add_parser("users", help="list users")
    _common(ls)
    ls.set_defaults(func=_users)

    db = cmds.add_parser("db", help="database schema")
    db.set_defaults(group_parser=db)
    dbc = db.add_subparsers(dest="db_command", metavar="COMMAND")
    up = dbc.add_parser("upgrade", help="create or migrate the schema to the newest version")
    _common(up)
    up.set_defaults(func=_upgrade)


def _store(args: argparse.Namespace) -> Any:
    from medcl.review.db import Store

    return Store.open(args.db, workspace=args.workspace)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise MedclError(f"environment variable {args.password_env} is not set")
        return value
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise MedclError("no password: pass --password-stdin or --password-env VAR")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise MedclError("the two passwords differ")
    return first


def _add_user(args: argparse.Namespace) -> int:
    from medcl.review.auth import create_user

    password = _read_password(args)
    user = create_user(_store(args), args.username, password, role=args.role)
    print(f"added {user.role} '{user.username}'")
    return 0


def _import(args: argparse.Namespace) -> int:
    from medcl.review.importer import import_predictions

    store = _store(args)
    failed = 0
    for path in args.paths:
        result = import_predictions(store, None, path)
        for err in result.errors:
            print(err, file=sys.stderr)
        failed += len(result.errors)
        print(
            f"{path}: {result.created} created, {result.skipped} skipped, "
            f"{len(result.errors)} errors"
        )
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> int:
    from medcl.review.auth import system_user
    from medcl.review.exports import export_corrections_manifest, export_reviews
    from medcl.review.feedback import export_mil_manifest

    store = _store(args)
    skipped: list[dict[str, Any]] = []
    if args.fmt == "manifest":
        text = export_corrections_manifest(store, system_user(), skipped=skipped)
    elif args.fmt == "mil-manifest":
        text = export_mil_manifest(
            store, system_user(), features_dir=args.features, skipped=skipped
        )
    else:
        text = export_reviews(store, system_user(), args.fmt, skipped=skipped)
    for item in skipped:
        print(
            f"left out {item['case_key']} (review {item['review_id']}): {item['reason']}",
            file=sys.stderr,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}" + (f" ({len(skipped)} review(s) left out)" if skipped else ""))
    return 0


def _settings(args: argparse.Namespace) -> int:
    from medcl.review.auth import system_user
    from medcl.review.blind import get_blind_review, set_blind_review

    store = _store(args)
    if args.blind_review is not None:
        set_blind_review(store, system_user(), args.blind_review == "on")
    print(f"blind review: {'on' if get_blind_review(store) else 'off'}")
    return 0


def _labels_change(args: argparse.Namespace) -> int:
    from medcl.review.auth import system_user
    from medcl.review.labels import add_extra_label, remove_extra_label

    store = _store(args)
    if args.labels_action == "add":
        info = add_extra_label(store, system_user(), args.model, args.label)
        print(f"model '{info.model}': label '{info.label}' added")
    else:
        remove_extra_label(store, system_user(), args.model, args.label)
        print(f"model '{args.model}': label '{args.label}' removed")
    return 0


def _labels_list(args: argparse.Namespace) -> int:
    from medcl.review.auth import system_user
    from medcl.review.labels import list_extra_labels

    for item in list_extra_labels(_store(args), system_user(), args.model):
        print(f"{item.model}\t{item.label}\t{item.added_by}\t{item.created:%Y-%m-%d %H:%M}")
    return 0


def _users(args: argparse.Namespace) -> int:
    from medcl.review.auth import list_users, system_user

    for user in list_users(_store(args), system_user()):
        state = "active" if user.active else "inactive"
        print(f"{user.username}\t{user.role}\t{state}")
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    store = _store(args)  # opening migrates to head
    print(f"{store.url}: schema up to date")
    return 0
