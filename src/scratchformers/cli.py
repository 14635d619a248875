"""The ``scratchformers`` command (also ``python -m scratchformers``).

    scratchformers translate MODEL_DIR "the cat sat" "a dog"       # one translation per line
    cat sentences.txt | scratchformers translate MODEL_DIR --num_beams 4 --batch_size 16
    scratchformers classify MODEL_DIR cat.png dog.jpg --top_k 3      # image <TAB> label <TAB> score
    scratchformers upgrade MODEL_DIR                                 # current model code into an old checkpoint
    scratchformers export ct2 MODEL_DIR OUT_DIR --quantization int8  # a CTranslate2 model, for serving

Output line ``i`` belongs to input ``i`` (line breaks and tabs inside a translation are printed as spaces); with
``--num_return_sequences n`` the ``n`` candidates of an input share its line, separated by tabs.

Every failure a user can cause prints one line ``scratchformers: error: <problem and fix>`` on stderr and exits with
status 2, never a traceback: a missing directory, a directory without a model or of the wrong kind, weights that do
not match ``config.json`` (missing, unexpected or wrong-shape tensors: the model would otherwise run with random
weights), a corrupt weight file, weights holding NaN or inf, a damaged JSON file (``tokenizer.json`` cut off by a
copy), a tokenizer whose vocabulary does not fit the model, a ``model_type`` neither this package nor transformers
knows (never the custom-code question), an unavailable ``--device``, stdin that is not text in the locale's encoding
(UTF-8), a folder given as an image. ``classify`` reads images as the image-classification pipeline does (16-bit
images at full precision); it reports an unreadable image (or one over Pillow's pixel limit: ``--max_image_pixels``)
on its own line, goes on with the other images and exits with status 2 at the end, so every readable image is still
classified. Ctrl-C exits with status 130 and no traceback, also while the command is still importing torch.
"""

from __future__ import annotations

import argparse
import codecs
import os
import pickle
import signal
import sys
import warnings
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Optional, Sequence, TypeVar

from .input_checks import check_vocabulary_fits, check_weights_finite

T = TypeVar("T")

PROG = "scratchformers"


def started_as_the_command() -> bool:
    """Whether this process is the ``scratchformers`` command (the console script or ``python -m scratchformers``),
    not a program that imports the package."""
    if os.path.basename(sys.argv[0]) in (PROG, f"{PROG}.exe"):
        return True
    argv = getattr(sys, "orig_argv", [])  # ['python', '-m', 'scratchformers', ...]
    return any(flag == "-m" and module == PROG for flag, module in zip(argv, argv[1:]))


def exit_quietly_on_interrupt_while_starting() -> None:
    """Ctrl-C while the command imports torch and transformers (seconds) ends it with status 130 and no traceback;
    the package's ``__init__`` calls this first. ``main`` restores Python's own handling once it runs."""
    if started_as_the_command():
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))


class CLIError(Exception):
    """A failure the user can fix (the command, its files, the device, the input): reported as one line on stderr,
    exit status 2."""


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------
BF16_HELP = ("compute under bf16 autocast (a float32 model on a CPU, or a GPU that supports bf16); default: in the "
             "model's own dtype. Faster on some CPUs, slower on others: benchmarks/README.md")


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
    translate.add_argument("--bf16", action="store_true", help=BF16_HELP)

    classify = commands.add_parser("classify", help="classify images with an image-classification model")
    classify.add_argument("model_dir", metavar="MODEL_DIR", help="directory saved with save_pretrained (+ processor)")
    classify.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    classify.add_argument("--top_k", type=positive_int, default=1, help="labels printed per image")
    classify.add_argument("--max_image_pixels", type=int, default=None,
                          help="read images up to this many pixels (default: Pillow's limit, about 179 million; 0: "
                          "no limit, for files you trust)")
    classify.add_argument("--device", default=None, help="e.g. cpu, cuda (default: GPU 0 if there is one)")
    classify.add_argument("--bf16", action="store_true", help=BF16_HELP)

    upgrade = commands.add_parser(
        "upgrade", help="save this package's model code into a checkpoint saved by an older scratchformers",
        description="Replace the model code (*.py) and config.json saved in MODEL_DIR with what the installed "
        "scratchformers saves, so that trust_remote_code=True loading runs current code; weights, tokenizer and "
        "generation config stay as they are.",
    )
    upgrade.add_argument("model_dir", metavar="MODEL_DIR", help="directory saved with save_pretrained")

    export = commands.add_parser("export", help="export a model for serving with another inference engine")
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    ct2 = targets.add_parser(
        "ct2", help="a CTranslate2 model directory (pip install 'scratchformers[ct2]')",
        description="Write a CTranslate2 model that translates like the translation model in MODEL_DIR (same "
        "tokens in float32): model.bin, config.json, the vocabulary and the tokenizer, into OUT_DIR.",
    )
    ct2.add_argument("model_dir", metavar="MODEL_DIR", help="translation model saved with save_pretrained (+tokenizer)")
    ct2.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (new or empty, unless --overwrite)")
    ct2.add_argument("--quantization", default=None,
                     help="CTranslate2 weight type, e.g. int8, int8_float16, float16 (default: float32, exact)")
    ct2.add_argument("--overwrite", action="store_true",
                     help="replace the CTranslate2 model files in a non-empty OUT_DIR (other files stay)")
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

    from .input_checks import damaged_json_file

    problem = damaged_json_file(model_dir)
    if problem:
        raise CLIError(problem)
    try:  # never the custom-code question on a terminal: this command runs this package's and transformers' models
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        model_type = saved_model_type(path / "config.json")
        if model_type is not None:
            raise CLIError(f"'{model_dir}' holds a {model_type!r} model (config.json model_type), which neither "
                           "scratchformers nor transformers knows: use a model saved by scratchformers (or a "
                           "transformers one)") from error
        raise CLIError(f"'{model_dir}' does not hold a model this package can load: {first_line(error)}") from error


def saved_model_type(config_file: Path) -> Optional[str]:
    """The ``model_type`` written in ``config_file``, or None."""
    import json

    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) else None


def check_device(device: Optional[str]) -> Optional[str]:
    """``device`` unchanged if this machine has it (``None``: the pipeline's default), else a ``CLIError``: checked
    before anything is loaded, so a typo or a missing GPU costs no loading time and gives no traceback."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps") or (parsed.type == "mps" and parsed.index):
        raise CLIError(f"--device {device} is not a device (cpu, cuda, cuda:N, mps)")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: no CUDA GPU is available; use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise CLIError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {device}: no MPS (Apple GPU) is available; use --device cpu")
    return device


@contextmanager
def warnings_only_on_success() -> Iterator[None]:
    """Hold back the warnings raised inside the block and show them only if it succeeds: a load that fails prints
    its one-line error, not also the warnings of the half-done load (e.g. torch's about an odd pickle)."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno, warning.file,
                             warning.line)


def load_model(auto_class: Any, model_dir: str) -> Any:
    """``auto_class.from_pretrained(model_dir)``, with every loading problem a ``CLIError``.

    transformers only logs (as a warning this command hides) checkpoint tensors that are missing or unexpected, and
    fills missing ones with random values: here they are errors, like a tensor of the wrong shape, because a model
    running on partly random weights prints confident garbage. Tied weights (the output projection that shares the
    embedding, saved once) are not missing: transformers leaves them out of the report.
    """
    try:
        with warnings_only_on_success():
            model, info = auto_class.from_pretrained(model_dir, output_loading_info=True,
                                                     ignore_mismatched_sizes=True)  # reported below, not raised
    except (OSError, ValueError) as error:
        raise CLIError(f"could not load the model in '{model_dir}': {first_line(error)}") from error
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:  # torch.load of a damaged pytorch_model.bin
        raise CLIError(
            f"the weights in '{model_dir}' are corrupt or not a PyTorch checkpoint ({type(error).__name__}: "
            f"{first_sentence(error)}): save the model again with save_pretrained, or copy the directory again"
        ) from error
    problems = weight_problems(info)  # (a missing shared embedding, absent from the report, is refused on loading)
    if problems:
        raise CLIError(
            f"the weights in '{model_dir}' do not match its config.json ({'; '.join(problems)}): re-save the model "
            "with save_pretrained, or use the config.json it was saved with"
        )
    try:
        check_weights_finite(model)
    except ValueError as error:
        raise CLIError(f"'{model_dir}': {first_line(error)}") from error
    return model


def weight_problems(info: dict) -> list[str]:
    """The loading report of ``from_pretrained(..., output_loading_info=True)`` as short phrases (empty: none)."""
    problems = []
    if info.get("missing_keys"):
        problems.append(some(info["missing_keys"], "tensor{s} missing"))
    if info.get("unexpected_keys"):
        problems.append(some(info["unexpected_keys"], "unexpected tensor{s}"))
    if info.get("mismatched_keys"):
        shapes = {name: f"{name} {tuple(saved)} instead of {tuple(expected)}"
                  for name, saved, expected in info["mismatched_keys"]}
        problems.append(some(shapes, "tensor{s} of the wrong shape", describe=shapes.get))
    problems.extend(message.strip().splitlines()[0] for message in info.get("error_msgs") or [] if message.strip())
    return problems


def some(names: Collection[str], label: str, shown: int = 3, describe: Callable[[str], str] = str) -> str:
    """``"2 tensors missing: a, b"``, ``"12 tensors missing: a, b, c, ..."``: a count and the first few names (sorted),
    on one line; ``{s}`` in ``label`` is the plural's s."""
    ordered = sorted(names)
    listed = ", ".join(describe(name) for name in ordered[:shown]) + (", ..." if len(ordered) > shown else "")
    return f"{len(ordered)} {label.format(s='' if len(ordered) == 1 else 's')}: {listed}"


def on_device(make: Callable[[], T], device: Optional[str]) -> T:
    """``make()`` (a pipeline, which moves the model to ``device``), with a failure to do so a ``CLIError``."""
    try:
        return make()
    except (RuntimeError, ValueError) as error:  # CUDA out of memory or a broken driver, xpu/hpu not available
        raise CLIError(f"could not put the model on {device or 'the default device'}: {first_line(error)}; "
                       "try --device cpu") from error


def run_model(call: Callable[[], T], device: Optional[str], what: str) -> T:
    """``call()`` (the model at work), with the errors of its device a ``CLIError``."""
    import torch

    try:
        return call()
    except torch.cuda.OutOfMemoryError as error:  # torch.OutOfMemoryError from torch 2.5 on
        raise CLIError(f"out of memory on {device or 'the default device'} while {what}: use a smaller --batch_size "
                       "(or --num_beams), or --device cpu") from error
    except RuntimeError as error:
        raise CLIError(f"failed on {device or 'the default device'} while {what}: {first_line(error)}") from error


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def first_sentence(error: BaseException) -> str:
    """The first sentence of ``first_line(error)``: torch's messages go on for several."""
    line = first_line(error)
    end = line.find(". ")
    return line[: end + 1] if end > 0 else line


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

    device = check_device(args.device)
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
    for number, text in enumerate(args.texts, 1):
        bad = not_text(text)
        if bad:
            raise not_text_error(f"TEXT argument {number}", sys.getfilesystemencoding(), bad)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"no usable tokenizer in '{args.model_dir}' (save it next to the model): {first_line(error)}")
    try:
        check_vocabulary_fits(tokenizer, config)
    except ValueError as error:
        raise CLIError(f"'{args.model_dir}': {first_line(error)}") from error
    model = load_model(AutoModelForSeq2SeqLM, args.model_dir)

    generate_kwargs = {"num_return_sequences": args.num_return_sequences}
    if args.num_beams is not None:
        generate_kwargs["num_beams"] = args.num_beams
    if args.max_new_tokens is not None:
        generate_kwargs["max_new_tokens"] = args.max_new_tokens
    translator = on_device(
        lambda: TranslationPipeline(model=model, tokenizer=tokenizer, device=device, task="translation",
                                    autocast_bf16=args.bf16), device)

    texts: Iterable[str] = args.texts if args.texts else stdin_lines()
    for batch in batched(texts, args.batch_size):
        try:
            results = run_model(lambda: translator(batch, batch_size=args.batch_size, **generate_kwargs), device,
                                f"translating {len(batch)} sentence(s)")
        except ValueError as error:
            raise CLIError(first_line(error)) from error
        for records in results:
            records = records if isinstance(records, list) else [records]
            print("\t".join(one_line(record["translation_text"]) for record in records), flush=True)
    return 0


def stdin_lines() -> Iterator[str]:
    """The lines of stdin without their line break, read as they arrive; bytes that are not text are a ``CLIError``.

    Depending on the locale, Python either fails to decode such bytes (``UnicodeDecodeError``) or passes them on as
    lone surrogates (``surrogateescape``), which the tokenizer crashes on: both end here, as one line.
    """
    encoding = getattr(sys.stdin, "encoding", None) or "utf-8"
    try:
        for number, line in enumerate(sys.stdin, 1):
            bad = not_text(line)
            if bad:
                raise not_text_error("stdin", encoding, f"{bad} on line {number}")
            yield line.rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise not_text_error("stdin", error.encoding, f"byte 0x{error.object[error.start]:02x}") from None


def not_text(text: str) -> Optional[str]:
    """What in ``text`` is not text (``"byte 0xe9"``: a byte Python could not decode and kept as a lone surrogate),
    or ``None`` when it all is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(error.object[error.start])
        return f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
    return None


def not_text_error(where: str, encoding: str, what: str) -> CLIError:
    """``where`` (stdin, a TEXT argument) holds ``what``, which is not text in ``encoding``: say so, and the fix."""
    name = encoding_name(encoding)
    return CLIError(f"{where} is not {name} text ({what}): convert it to {name} first, e.g. with "
                    f"`iconv -f latin1 -t {name.lower()}` if it is Latin-1")


def encoding_name(encoding: str) -> str:
    """``"UTF-8"`` for any spelling of it, else the codec's name: for messages."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return encoding
    return "UTF-8" if name == "utf-8" else name


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
    """Print the top labels of every readable image; an unreadable one is reported and skipped (exit status 2 at the
    end). A path that does not exist is a typo in the command: it stops before the model is loaded."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    device = check_device(args.device)
    config = load_config(args.model_dir)
    if type(config) not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        raise CLIError(
            f"'{args.model_dir}' holds a {config.model_type} model, which does not classify images: "
            f"`{PROG} classify` needs an image-classification model"
        )
    for image in args.images:
        if Path(image).is_dir():
            raise CLIError(f"'{image}' is a folder, not an image file: pass the images in it, e.g. "
                           f"{os.path.join(image, '*.png')}")
        if not Path(image).is_file():
            raise CLIError(f"image '{image}' does not exist")
    if args.max_image_pixels is not None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = args.max_image_pixels or None
    try:
        processor = AutoImageProcessor.from_pretrained(args.model_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"no usable image processor in '{args.model_dir}' (save it next to the model): "
                       f"{first_line(error)}") from error
    model = load_model(AutoModelForImageClassification, args.model_dir)
    classifier = on_device(
        lambda: pipeline("image-classification", model=model, image_processor=processor, device=device,
                         autocast_bf16=args.bf16), device)

    unreadable = 0
    for image in args.images:
        try:
            pixels = read_image(image)
        except CLIError as error:
            report(error)
            unreadable += 1
            continue
        predictions = run_model(lambda: classifier(pixels, top_k=args.top_k), device, f"classifying '{image}'")
        for prediction in predictions:
            print(f"{image}\t{prediction['label']}\t{prediction['score']:.4f}", flush=True)
    return 2 if unreadable else 0


def read_image(path: str) -> Any:
    """The image at ``path`` decoded now (PIL decodes lazily), or a ``CLIError`` naming it. Read as the pipeline
    reads a path (``image_processing_vit.open_image``: in its own mode, upright by EXIF), so that a 16-bit image
    keeps its precision for a processor that reads it (ours); other processors convert it as transformers does."""
    from PIL import Image, UnidentifiedImageError

    from .image_processing_vit import open_image

    try:
        image = open_image(path)
        image.load()
        return image
    except UnidentifiedImageError as error:
        raise CLIError(f"'{path}' is not an image file this program can read: skipped it") from error
    except Image.DecompressionBombError as error:
        raise CLIError(f"'{path}' is larger than Pillow reads by default ({first_line(error)}): skipped it; if you "
                       "trust the file, pass --max_image_pixels 0 (no limit) or a higher limit") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise CLIError(f"'{path}' is a damaged or truncated image ({first_line(error)}): skipped it; save or copy "
                       "it again") from error


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
# export
# --------------------------------------------------------------------------------------------------------------
def export(args: argparse.Namespace) -> int:
    """``export ct2``: everything that can be checked before loading the model is (ctranslate2 installed, the
    weight type, OUT_DIR, the config), then the model is loaded with the checks of ``load_model``."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .configuration_transformer import ScratchTransformerConfig
    from .export_ct2 import check_exportable, check_out_dir, check_quantization, export_ct2, import_ctranslate2

    try:
        import_ctranslate2()
        check_quantization(args.quantization)
        check_out_dir(args.out_dir, args.overwrite)
    except (ImportError, ValueError, OSError) as error:
        raise CLIError(first_line(error)) from error
    config = load_config(args.model_dir)
    if not isinstance(config, ScratchTransformerConfig):
        raise CLIError(f"'{args.model_dir}' holds a {config.model_type} model, not a scratchformers translation model: "
                       f"`{PROG} export ct2` exports {ScratchTransformerConfig.model_type} models")
    try:
        check_exportable(config)
    except ValueError as error:
        raise CLIError(first_line(error)) from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"no usable tokenizer in '{args.model_dir}' (save it next to the model): {first_line(error)}")
    model = load_model(AutoModelForSeq2SeqLM, args.model_dir)
    try:
        written = export_ct2(model, args.out_dir, quantization=args.quantization, overwrite=args.overwrite,
                             tokenizer=tokenizer)
    except (ValueError, OSError, RuntimeError) as error:
        raise CLIError(f"could not export '{args.model_dir}': {first_line(error)}") from error
    print(f"{written}: wrote a CTranslate2 model ({args.quantization or 'float32'})")
    return 0


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------
def report(error: CLIError) -> None:
    """``error`` as the one line on stderr that every failure gets."""
    print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    if started_as_the_command():  # Ctrl-C: KeyboardInterrupt again, exit status 130 below
        signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    try:
        quiet_transformers()
        return {"translate": translate, "classify": classify, "upgrade": upgrade, "export": export}[args.command](args)
    except CLIError as error:
        report(error)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader left, e.g. `scratchformers translate ... | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
