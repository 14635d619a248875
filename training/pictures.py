"""The pictures every run leaves beside its model, linked from the model card: the training curves and, for
translation, the cross-attention of one test sentence."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from scratchformers.visualization import plot_attention, plot_training_curves

logger = logging.getLogger(__name__)

CURVES = "training_curves.png"
ATTENTION = "attention.png"


def draw_pictures(trainer, task: str, test_dataset) -> list[tuple[str, str]]:
    """Write ``training_curves.png`` (loss and the eval metric against steps) and, for translation,
    ``attention.png`` (the saved model's last-layer cross-attention, heads averaged, for the first test sentence)
    into the output dir (rank 0, after saving); return (file name, caption) of each one written. Without matplotlib, none (with a warning)."""
    output_dir = Path(trainer.args.output_dir)
    pictures = []
    try:
        metric = (trainer.args.metric_for_best_model or "").removeprefix("eval_") or None
        plot_training_curves(trainer.state.log_history, metric, output_dir / CURVES)
        pictures.append((CURVES, "Training loss, evaluation loss and the validation metric against steps"))
        if task == "translation" and len(test_dataset):
            source = test_dataset[0]["source"]
            # The saved model, as users load it (the trained one may be sharded across processes).
            model = AutoModelForSeq2SeqLM.from_pretrained(output_dir)
            plot_attention(model, AutoTokenizer.from_pretrained(output_dir), source, path=output_dir / ATTENTION,
                           max_new_tokens=40)
            pictures.append((ATTENTION, f"Cross-attention (last layer, mean of heads) translating: {source}"))
    except ImportError as error:
        logger.warning(f"No pictures in the output dir: {error}")
    return pictures
