"""embed_base: the base model's vectors of every text the later stages read, each encoded once.

Texts: make_triplets' train sample (titles and abstracts: every train kind, mining's corpus and the
classifier's slice come from it), evaluate's stratified test sample (titles and abstracts) and the
test triplets. Writes data/embeddings/base (texts.parquet + vectors.npy + encoder.json, a DVC-cached output) and
metrics/embed_base.json. finetune (adapter training, hard-negative mining), evaluate_base and, in
adapter mode, evaluate read it, so a finetune-only change encodes nothing. Finished chunks are kept
in data/embeddings/chunks until the stage completes: a killed run resumes where it stopped. A rerun
(another sample size or seed) takes the vectors of every text the previous output holds, when the same
model weights and settings made them, and encodes only the rest.
"""

from __future__ import annotations

import shutil
import time

from arxiv_embed import paths
from arxiv_embed.embeddings import distinct_texts, embed_texts_reusing
from arxiv_embed.errors import run
from arxiv_embed.evaluation.data import load_eval_data
from arxiv_embed.files import atomic_path, read_table, write_json
from arxiv_embed.models import load_model, resolve_model, weights_sha256
from arxiv_embed.schema.base import load
from arxiv_embed.schema.embed_base import EmbedBaseParams


def main() -> None:
    # 1. Params, and the texts: the train sample's and evaluate's.
    params = load(EmbedBaseParams)
    cfg = params.embed_base
    train = read_table(paths.TRAIN_SAMPLE, ["title", "abstract"], "make_triplets")
    # The classifier's slice (evaluate.max_train_papers) is drawn from the train sample read above: taking all of
    # it encodes the same texts whatever that size, so changing it re-encodes nothing.
    data = load_eval_data(params.evaluate.max_test_papers, train.height, params.shared.seed)
    texts = distinct_texts([train["abstract"], train["title"], *data.columns()])
    print(f"embed_base: {len(texts):,} distinct texts ({train.height:,} train sample papers, "
          f"{data.test.height:,} test sample papers, {data.triplets.height:,} test triplets)", flush=True)

    # 2. Encode in resumable chunks (the model's weights and settings name them), then write the output.
    weights = weights_sha256(resolve_model(params.model.base))  # a resumed run must not mix two versions of one name
    model = load_model(params.model.base, params.model.max_seq_length, params.model.trust_remote_code, backend=cfg.backend)
    key = f"{params.model.base}|{weights}|{params.model.max_seq_length}|{cfg.backend}"
    started = time.monotonic()
    # The previous output (dvc.yaml keeps it: persist) lends the vectors of every text it holds.
    vectors, reused = embed_texts_reusing(model, texts, paths.BASE_EMBEDDINGS, paths.EMBED_WORK, key, cfg.batch_size,
                                          cfg.chunk_size, what="embed_base")
    seconds = time.monotonic() - started
    with atomic_path(paths.BASE_EMBEDDINGS) as tmp:
        vectors.save(tmp, key)
    shutil.rmtree(paths.EMBED_WORK, ignore_errors=True)  # complete: the chunks' only use was resuming
    write_json(paths.metrics_file("embed_base"), {
        "texts": len(texts), "reused_texts": reused, "train_sample_papers": train.height, "test_sample_papers": data.test.height,
        "encode_seconds": round(seconds, 1), "texts_per_second": round((len(texts) - reused) / seconds, 1) if seconds else None,
        "device": str(model.device), "backend": cfg.backend, "model_weights_sha256": weights,
    })


if __name__ == "__main__":
    run(main, "embed_base")
