"""``fq-export eval``: a checkpoint (against its full-precision model) or a full-precision model on real data.

Every data option is read and checked before a model loads: ``--pairs`` (encoders: Spearman),
``--text`` (encoders: embedding cosine and top-10 retrieval agreement against full precision;
causal LMs: perplexity), ``--images`` (vision models: top-1). An option the model's family cannot
use is an error, not ignored.
"""
from __future__ import annotations

from .common import UserError, _model_args, load_quantized, load_source, model_source

OUTPUTS = {"json": (".json",)}
#: neighbours compared by ``retrieval_top10_agreement``; each sentence needs this many others
TOP_K = 10
_DATA_FOR = {"encoder": {"pairs", "text"}, "causal_lm": {"text"}, "vit": {"images"}}
_FAMILY_WORDS = {"encoder": "a text encoder", "causal_lm": "a causal language model", "vit": "a vision model"}
_USE = {"encoder": "--pairs or --text", "causal_lm": "--text", "vit": "--images"}


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint, or a full-precision model with --model alone")
    p.add_argument("--checkpoint")
    _model_args(p)
    p.add_argument("--pairs", help="sentence-pair TSV (sentence1, sentence2, score) -> spearman")
    p.add_argument("--text", help="text file/folder -> perplexity (causal LMs) or embedding_cosine (encoders)")
    p.add_argument("--images", help="ImageNet-style folder -> top1")
    p.add_argument("--limit", type=int, help="at most this many samples / windows")
    p.add_argument("--window", type=int, help="perplexity window (default: the model's context, 2048 at most)")
    p.add_argument("--json", required=True)


def _check_data_options(args, family: str | None, name: str) -> None:
    if family is None:
        return
    for option in ("pairs", "text", "images"):
        if getattr(args, option) is not None and option not in _DATA_FOR[family]:
            raise UserError(f"--{option} does not apply to {name}, {_FAMILY_WORDS[family]}: use {_USE[family]}")
    if family == "vit" and not args.images:
        raise UserError("vision models are evaluated on an image folder: pass --images DIR")
    if args.window is not None and family != "causal_lm":
        raise UserError(f"--window applies to causal language models only; {name} is {_FAMILY_WORDS[family]}")


def _read_data(args, family: str | None, quantized: bool) -> dict:
    """The evaluation data, read and checked before any model loads."""
    from calib import text as text_data

    from .evaluate import read_pairs

    data = {}
    if family == "encoder":
        if args.pairs:
            data["pairs"] = read_pairs(args.pairs)
        sentences = text_data.text_sentences(args.text) if args.text else text_data.stdlib_sentences("eval")
        data["sentences"] = sentences[: args.limit or 512]
        if quantized and len(data["sentences"]) <= TOP_K:
            where = f"--text {args.text}" if args.text else "the default evaluation text"
            limit = f" with --limit {args.limit}" if args.limit else ""
            raise UserError(f"eval compares top-{TOP_K} retrieval neighbours, so it needs at least {TOP_K + 1} "
                            f"sentences; {where}{limit} gives {len(data['sentences'])}")
    elif family == "causal_lm":
        data["corpus"] = text_data.read_text_source(args.text) if args.text else text_data.stdlib_corpus("eval")
    elif family == "vit":
        from calib.images import list_images

        list_images(args.images)  # exists, holds images
    return data


def command(args) -> int:
    from calib.metrics import cosine_rows, topk_neighbour_agreement
    from fq_export.checkpoint import read_metadata
    from fq_export.io import write_json
    from fq_export.models.registry import model_family

    from .evaluate import embed, pairs_spearman, perplexity, top1

    if not args.checkpoint and not args.model:
        raise UserError("eval needs --checkpoint CKPT, or --model M for the full-precision model")
    if args.checkpoint:
        for option, value in (("--model", args.model), ("--weights", args.weights),
                              ("--random-weights", args.random_weights)):
            if value:
                raise UserError(f"eval takes --checkpoint or {option}, not both: a checkpoint names its own model")
        source = model_source(read_metadata(args.checkpoint), args.checkpoint)
        name = source["model"]
    else:
        source, name = None, args.model
    family = model_family(name)
    _check_data_options(args, family, name)
    data = _read_data(args, family, bool(args.checkpoint))

    if args.checkpoint:
        adapter, meta = load_quantized(args.checkpoint, args.device)
        reference = load_source(source, args.device) if adapter.family == "encoder" else None
    else:
        from .common import _load

        adapter, reference = _load(args), None
    if adapter.family != family:  # a name model_family could not classify
        _check_data_options(args, adapter.family, name)
        data = _read_data(args, adapter.family, bool(args.checkpoint))
    result = {"model": adapter.source, "checkpoint": args.checkpoint, "quantized": bool(args.checkpoint)}
    if adapter.family == "encoder":
        if args.pairs:
            result["spearman"] = pairs_spearman(adapter, data["pairs"])
            if reference is not None:
                result["spearman_full_precision"] = pairs_spearman(reference, data["pairs"])
        sentences = data["sentences"]
        result["eval_text"] = args.text or "python-stdlib-docstrings:eval"
        if reference is not None:
            emb, ref = embed(adapter, sentences), embed(reference, sentences)
            result["embedding_cosine"] = float(cosine_rows(emb, ref).mean())
            result["retrieval_top10_agreement"] = topk_neighbour_agreement(ref, emb, TOP_K)
            result["sentences"] = len(sentences)
    elif adapter.family == "causal_lm":
        result["eval_text"] = args.text or "python-stdlib-docstrings:eval"
        result.update(perplexity(adapter, data["corpus"], args.window, args.limit))
    else:
        result.update(top1(adapter, args.images, args.limit))
    write_json(args.json, result)
    shown = {k: v for k, v in result.items() if isinstance(v, float)}
    if shown:
        print(" ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    print(f"wrote {args.json}")
    return 0
