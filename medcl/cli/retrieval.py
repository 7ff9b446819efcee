"""``medcl retrieval ...``: demonstration retrieval for in-context learning."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from medcl.cli.common import (
    add_config_args,
    add_evaluation_args,
    add_workspace_arg,
    is_rank_zero,
    resolve_config,
    resolved_data_root,
)


def add_parser(sub: Any) -> None:
    group = sub.add_parser("retrieval", help="demonstration retrieval for in-context learning")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(dest="retrieval_command", metavar="COMMAND")
    p = cmds.add_parser(
        "train-cci",
        help="fine-tune a registry encoder with class-conditioned contrastive invariance",
        description=(
            "InvariantSelectPR's encoder: same class positive (cross-domain pairs weighted up), "
            "plus invariance to a domain-perturbed view; writes encoder.pt (medcl:<path>)."
        ),
    )
    p.add_argument("--encoder", default=None, help="starting registry encoder")
    p.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=_train_cci)

    ix = cmds.add_parser(
        "index",
        help="embed a labelled pool and save a FAISS index of it",
        description=(
            "Builds a pool index; with --add-reviewed, adds the accepted and corrected "
            "retrieval cases of the review store to the existing index in --out instead "
            "(embedded with the index's own encoder, provenance kept, no duplicates)."
        ),
    )
    ix.add_argument("--encoder", default=None, help="registry encoder (e.g. medcl:cci.pt)")
    ix.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    ix.add_argument("--out", dest="out_dir", type=Path, default=None, help="index folder")
    ix.add_argument(
        "--add-reviewed",
        action="store_true",
        help="add reviewed retrieval cases to the index in --out",
    )
    ix.add_argument("--db", default=None, metavar="URL", help="review store (--add-reviewed)")
    ix.add_argument("--model", default=None, help="--add-reviewed: only this prediction model")
    add_config_args(ix)
    add_workspace_arg(ix)
    ix.set_defaults(func=_index)

    for name, helptext in (
        ("prompt", "select demonstrations for a query and write the in-context prompt"),
        ("predict", "select demonstrations, ask the LMM endpoint and parse its answer"),
    ):
        q = cmds.add_parser(name, help=helptext)
        q.add_argument("query", type=Path, help="query image")
        q.add_argument("--index", type=Path, required=True, help="folder from `retrieval index`")
        q.add_argument("--encoder", required=True, help="the encoder the index was built with")
        q.add_argument("--image-size", type=int, default=None)
        q.add_argument("--selector", default="topk", choices=["random", "topk", "invariant"])
        q.add_argument("-k", type=int, default=7, help="demonstrations")
        q.add_argument("--group", default=None, help="the query's group (never a demonstration)")
        q.add_argument("--out", type=Path, default=None, help="write messages / episode JSON")
        if name == "predict":
            q.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint /v1")
            q.add_argument("--model", required=True, help="model name at the endpoint")
            q.add_argument("--timeout", type=float, default=60.0)
        q.set_defaults(func=_prompt if name == "prompt" else _predict)

    e = cmds.add_parser(
        "eval",
        help="RandomPR vs TopKNearestPR vs InvariantSelectPR: agreement@k and k-NN accuracy",
        description=(
            "Pool = source domains, queries = target domains (no group on both sides); for each "
            "seed trains CCI, embeds, selects and scores k in ks. Resumes from cached runs."
        ),
    )
    add_evaluation_args(e, "retrieval")
    e.set_defaults(func=_eval)


def _train_cci(args: argparse.Namespace) -> int:
    from medcl.retrieval.cci_train import CCITrainConfig, run_train_cci

    cfg = resolve_config(CCITrainConfig, args, {"out_dir": args.out_dir, "encoder": args.encoder})
    res = run_train_cci(cfg, workspace=args.workspace, data_root=resolved_data_root(args))
    if is_rank_zero():
        print(
            f"{res.num_images} images from {res.num_domains} domains, last loss {res.last_loss:.4f}"
        )
        print(f"encoder: {res.encoder}  (create_encoder('medcl:{res.encoder}'))")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from medcl.retrieval.evaluate import RetrievalEvalConfig, run_retrieval_eval

    cfg = resolve_config(RetrievalEvalConfig, args, {"out_dir": args.out_dir})
    _, table = run_retrieval_eval(
        cfg, workspace=args.workspace, data_root=resolved_data_root(args), readme=args.readme
    )
    print(table)
    return 0


def _add_reviewed(args: argparse.Namespace) -> int:
    from medcl.errors import MedclError
    from medcl.retrieval.reviewed import add_reviewed_to_index
    from medcl.review.auth import system_user
    from medcl.review.db import Store

    if args.out_dir is None:
        raise MedclError("--add-reviewed needs --out: the index folder to add to")
    store = Store.open(args.db, workspace=args.workspace)
    res = add_reviewed_to_index(args.out_dir, store, system_user(), model=args.model)
    for item in res.skipped:
        print(f"left out {item['case_key']}: {item['reason']}", file=sys.stderr)
    print(f"added {len(res.added)} reviewed case(s); {res.count} demonstrations")
    print(f"fingerprint {res.fingerprint_before} -> {res.fingerprint_after}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from medcl.retrieval.pool import PoolIndexConfig, build_pool_index

    if args.add_reviewed:
        return _add_reviewed(args)

    cfg = resolve_config(PoolIndexConfig, args, {"out_dir": args.out_dir, "encoder": args.encoder})
    out = build_pool_index(cfg, workspace=args.workspace, data_root=resolved_data_root(args))
    print(f"index: {out}")
    return 0


def _episode(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    from medcl.retrieval.pool import load_encoder, open_pool_index, select_demonstrations
    from medcl.retrieval.prompts import build_messages, episode_json

    encoder = load_encoder(args.encoder, args.image_size)
    index = open_pool_index(args.index, encoder, args.encoder)  # checks the pool as it is now
    demos = select_demonstrations(
        index, encoder, args.query, args.k, selector=args.selector, query_group=args.group
    )
    labels = sorted(index.metadata["label"].astype(str).unique())
    messages = build_messages(args.query, demos, labels=labels)
    return messages, episode_json(args.query, demos, labels=labels), labels


def _prompt(args: argparse.Namespace) -> int:
    import json

    messages, episode, _ = _episode(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "messages.json").write_text(json.dumps(messages, indent=1))
        (args.out / "episode.json").write_text(json.dumps(episode, indent=2, default=str))
    for demo in episode["demonstrations"]:
        print(f"{demo['label']:12} {demo['similarity']}  {demo['image_path']}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from medcl.retrieval.lmm import LMMClient
    from medcl.retrieval.parse import parse_label

    messages, _, labels = _episode(args)
    client = LMMClient(args.base_url, args.model, timeout_s=args.timeout)
    reply = client.complete(messages)
    print(f"answer: {parse_label(reply.text, labels)}  (raw: {reply.text!r})")
    return 0
