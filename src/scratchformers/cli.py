"""The ``scratchformers`` command (also ``python -m scratchformers``).

    scratchformers translate MODEL_DIR "the cat sat" "a dog"       # one translation per line
    cat sentences.txt | scratchformers translate MODEL_DIR --num_beams 4 --batch_size 16
    scratchformers classify MODEL_DIR cat.png dog.jpg --top_k 3      # image <TAB> label <TAB> score
    scratchformers upgrade MODEL_DIR                                 # current model code into an old checkpoint

Output line ``i`` belongs to input ``i`` (line breaks and tabs inside a translation are printed as spaces); with
``--num_return_sequences n`` the ``n`` candidates of an input share its line, separated by tabs. Mistakes in the command (a missing directory, a directory without a model, a model of
the wrong kind) exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import os
import sys
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

PROG = "scratchformers"


class CLIError(Exception):
    """A mistake in the command line: reported as one line on stderr, exit status 2."""


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Use scratchformers models from the command line.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    translate = commands.add_parser("translate", help="translate text with an encoder-decoder model",
                                    description="Translate TEXT arguments, or the lines of stdin when none are given.")
    translate.add_argument("model_dir", metavar="MODEL_DIR", help="directory saved with save_pretrained (+ tokenizer)")
    translate.add_argument("texts", metavar="TEXT", nargs="*", help="sentences to translate (default: stdin lines)")
    translate.add_argument("--num_beams", type=positive_int, default=None, help="beam size (default: greedy)")
    translate.add_argument("--max_new_tokens", type=positive_int, default=None, help="length limit of a translation")
    translate.add_argument("--batch_size", type=positive_int, default=1, help="sentences translated together")
    translate.add_argument("--num_return_sequences", type=positive_int, default=1,
                           help="candidates per sentence (at most --num_beams), tab-separated")
    translate.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: GPU 0 if there is one)")

    classify = commands.add_parser("classify", help="classify images with an image-classification model")
    classify.add_argument("model_dir", metavar="MODEL_DIR", help="directory saved with save_pretrained (+ processor)")
    classify.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    classify.add_argument("--top_k", type=positive_int, default=1, help="labels printed per image")
    classify.add_argument("--device", default=None, help="e.g. cpu, cuda (default: GPU 0 if there is one)")

    upgrade = commands.add_parser(
        "upgrade", help="save this package's model code into a checkpoint saved by an older scratchformers",
        description="Replace the model code (*.py) and config.json saved in MODEL_DIR with what the installed "
        "scratchformers saves, so that trust_remote_code=True loading runs current code; weights, tokenizer and "
        "generation config stay as they are.",
    )
    upgrade.add_argument("model_dir", metavar="MODEL_DIR", help="directory saved with save_pretrained")
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# --------------------------------------------------------------------------------------------------------------
# Loading, with clear errors
# --------------------------------------------------------------------------------------------------------------
def load_config(model_dir: str):
    """The directory's config, or a ``CLIError`` saying why there is none."""
    path = Path(model_dir)
    if not path.exists():
        raise CLIError(f"model directory '{model_dir}' does not exist")
    if not path.is_dir():
        raise CLIError(f"'{model_dir}' is a file, not a model directory")
    if not (path / "config.json").is_file():
        raise CLIError(f"'{model_dir}' is not a model directory: it has no config.json (save one with save_pretrained)")

    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as error:
        raise CLIError(f"'{model_dir}' does not hold a model this package can load: {first_line(error)}") from error


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def quiet_transformers() -> None:
    """No progress bars or info logs on stderr: it is for warnings and errors."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------------------------
# translate
# --------------------------------------------------------------------------------------------------------------
def translate(args: argparse.Namespace) -> int:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING

    from .pipeline_translation import TranslationPipeline

    config = load_config(args.model_dir)
    if type(config) not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING:
        raise CLIError(
            f"'{args.model_dir}' holds a {config.model_type} model, which does not translate: `{PROG} translate` "
            f"needs an encoder-decoder (sequence-to-sequence) model"
        )
    if args.num_beams is not None and args.num_return_sequences > args.num_beams:
        raise CLIError(f"--num_return_sequences {args.num_return_sequences} needs --num_beams >= it")
    if args.num_beams is None and args.num_return_sequences > 1:
        raise CLIError("--num_return_sequences > 1 needs --num_beams (greedy search finds one translation)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"no usable tokenizer in '{args.model_dir}' (save it next to the model): {first_line(error)}")
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"could not load the model in '{args.model_dir}': {first_line(error)}") from error

    generate_kwargs = {"num_return_sequences": args.num_return_sequences}
    if args.num_beams is not None:
        generate_kwargs["num_beams"] = args.num_beams
    if args.max_new_tokens is not None:
        generate_kwargs["max_new_tokens"] = args.max_new_tokens
    translator = TranslationPipeline(model=model, tokenizer=tokenizer, device=args.device, task="translation")

    texts: Iterable[str] = args.texts if args.texts else (line.rstrip("\r\n") for line in sys.stdin)
    for batch in batched(texts, args.batch_size):
        try:
            results = translator(batch, batch_size=args.batch_size, **generate_kwargs)
        except ValueError as error:
            raise CLIError(first_line(error)) from error
        for records in results:
            records = records if isinstance(records, list) else [records]
            print("\t".join(one_line(record["translation_text"]) for record in records), flush=True)
    return 0


def one_line(text: str) -> str:
    """Line breaks and tabs inside a translation become spaces: output line ``i`` stays input line ``i``."""
    return "".join(" " if char == "\t" or char.splitlines() != [char] else char for char in text)


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of ``size`` items (the last may be shorter), so stdin is translated as it arrives."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# --------------------------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------------------------
def classify(args: argparse.Namespace) -> int:
    from transformers import pipeline
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    config = load_config(args.model_dir)
    if type(config) not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        raise CLIError(
            f"'{args.model_dir}' holds a {config.model_type} model, which does not classify images: "
            f"`{PROG} classify` needs an image-classification model"
        )
    for image in args.images:
        if not Path(image).is_file():
            raise CLIError(f"image '{image}' does not exist")
    try:
        classifier = pipeline("image-classification", model=args.model_dir, device=args.device)
    except (OSError, ValueError, RuntimeError) as error:
        raise CLIError(f"could not load the image classifier in '{args.model_dir}': {first_line(error)}") from error

    from PIL import Image, UnidentifiedImageError

    for image in args.images:
        try:
            with Image.open(image) as opened:
                predictions = classifier(opened.convert("RGB"), top_k=args.top_k)
        except UnidentifiedImageError as error:
            raise CLIError(f"'{image}' is not an image file this program can read") from error
        for prediction in predictions:
            print(f"{image}\t{prediction['label']}\t{prediction['score']:.4f}", flush=True)
    return 0


# --------------------------------------------------------------------------------------------------------------
# upgrade
# --------------------------------------------------------------------------------------------------------------
def upgrade(args: argparse.Namespace) -> int:
    from .remote_code import upgrade_remote_code

    load_config(args.model_dir)
    try:
        written = upgrade_remote_code(args.model_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"could not upgrade '{args.model_dir}': {first_line(error)}") from error
    print(f"{args.model_dir}: wrote {', '.join(written)}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        quiet_transformers()
        return {"translate": translate, "classify": classify, "upgrade": upgrade}[args.command](args)
    except CLIError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader left, e.g. `scratchformers translate ... | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
