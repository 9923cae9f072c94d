"""Fine-tuning and batch inference across processes: 2 CPU ranks (gloo, torchrun) against 1 process.

Two torchrun launches (module fixture `two_ranks`) do every 2-rank run: the
fine-tuning jobs through tests/_distributed_jobs.py (one launch, several jobs) and
batch inference through `python -m mnv3_fast.predict` itself.  The 1-process runs
call the modules' main() in this process.  Model: MobileNetV3-Small at width 0.5,
3 classes, 32x32 images.

What "matches 1 process" means with BatchNorm: under DDP each rank normalises over
its own batch (no SyncBatchNorm on the CPU), so 2 ranks at batch 2 are a different
function from 1 process at batch 4.  The comparison therefore runs with
--freeze-bn (BN on its running statistics) and --dropout 0, where the two must
agree up to float rounding; the default train-mode BN run checks that the ranks
stay identical and that a checkpoint resumes exactly.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import mnv3_fast
from mnv3_fast import finetune, predict
from mnv3_fast._distributed import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240  # per torchrun launch; both together take ~12 s on 2 cores

CLASSES = ("a", "b", "c")
TRAIN_COUNTS = (3, 3, 4)  # 10 images: 5 per rank, 2 steps of 2 per epoch; 3 steps cross an epoch
VAL_COUNTS = (2, 1, 2)  # 5: the ranks' validation shards differ in size
N_PREDICT = 7  # odd: 4 images on rank 0, 3 on rank 1

TRAIN = ["--epochs", "2", "--batch-size", "2", "--image-size", "32", "--workers", "0", "--amp", "none",
         "--lr", "0.02", "--seed", "0"]
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
PREDICT = ["--batch-size", "2", "--image-size", "32", "--workers", "0", "--topk", "2"]


def _write_images(folder, count, seed, tint=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 160, (32, 32, 3)) + np.array([tint, 0, 0])
        from PIL import Image

        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.png"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny ImageFolder (train/val), 7 images to predict, a start checkpoint."""
    torchvision = pytest.importorskip("torchvision")
    root = tmp_path_factory.mktemp("distributed")
    for c, (name, n_train, n_val) in enumerate(zip(CLASSES, TRAIN_COUNTS, VAL_COUNTS)):
        _write_images(root / "data" / "train" / name, n_train, seed=c, tint=40 * c)
        _write_images(root / "data" / "val" / name, n_val, seed=10 + c, tint=40 * c)
    _write_images(root / "images" / "p", 4, seed=20)
    _write_images(root / "images" / "q" / "r", N_PREDICT - 4, seed=21)
    torch.manual_seed(0)
    start = torchvision.models.mobilenet_v3_small(width_mult=0.5, num_classes=len(CLASSES))
    # BN statistics of real activations, as a pretrained model has: with the initial ones (mean 0,
    # variance 1) frozen BN passes next to nothing of the image on, and the runs compared
    # below would agree whatever images they were given.
    bns = [m for m in start.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration batches
    with torch.no_grad():
        start.train()(torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    torch.save(start.state_dict(), root / "start.pt")  # a torchvision checkpoint
    return root


def _torchrun(args, cwd):
    """Runs `torchrun --standalone --nproc-per-node 2 ARGS` (standalone: it picks free ports), killed
    with everything it started when it overruns."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s: {' '.join(cmd)}\n{out[-5000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited with {proc.returncode}: {' '.join(cmd)}\n{out[-5000:]}")
    return out


@pytest.fixture(scope="module")
def two_ranks(work):
    """Every 2-rank run; returns torchrun's output of the predict launch."""
    common = [str(work / "data"), "--model", str(work / "start.pt"), *TRAIN]
    jobs = [
        # BN in train mode (the default): 3 steps, and the same split 1 + 2 across a restart.
        {"module": "finetune", "argv": common + ["--output-dir", "ddp", "--max-steps", "3"], "dump": "ddp.{rank}.pt"},
        {"module": "finetune", "argv": common + ["--output-dir", "resumed", "--max-steps", "1"]},
        {"module": "finetune", "argv": common + ["--output-dir", "resumed", "--max-steps", "3"],
         "dump": "resumed.{rank}.pt"},
        # Frozen BN, no dropout: comparable with 1 process at twice the batch.
        {"module": "finetune", "argv": common + ["--output-dir", "frozen", "--max-steps", "3", "--freeze-bn",
                                                 "--dropout", "0"], "dump": "frozen.{rank}.pt"},
    ]
    (work / "jobs.json").write_text(json.dumps(jobs))
    _torchrun([os.path.join(ROOT, "tests", "_distributed_jobs.py"), "jobs.json"], cwd=work)
    return _torchrun(["-m", "mnv3_fast.predict", "images", "--model", "ddp/last.pt", "--output-dir", "preds2",
                      *PREDICT], cwd=work)


def _in_process(module, argv, cwd):
    """module.main(argv) in this process, from `cwd`, leaving the global RNG as it was."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with torch.random.fork_rng(devices=[]):
            return module.main([str(a) for a in argv])
    finally:
        os.chdir(old)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_equal_tensors(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs by {(a[k].double() - b[k].double()).abs().max()}"


def _params(model_state: dict):
    """The entries of a state_dict that are parameters (not BN statistics)."""
    return {k: v for k, v in model_state.items() if not k.endswith(BN_BUFFERS)}


# ------------------------------------------------------------------ fine-tuning


def test_distributed_finetune_ranks_identical(work, two_ranks):
    for run in ("ddp", "frozen"):
        rank0, rank1 = _state(work / f"{run}.0.pt"), _state(work / f"{run}.1.pt")
        assert rank0["step"] == rank1["step"] == 3
        # Parameters: bit-identical (DDP averages the gradients).  BN running statistics are
        # rank 0's at every forward (DDP broadcasts them); rank 0's are the checkpoint's.
        _assert_equal_tensors(_params(rank0["model"]), _params(rank1["model"]),
                              f"{run}: rank 0 vs rank 1")
        checkpoint = _state(work / run / "last.pt")
        assert checkpoint["step"] == 3
        _assert_equal_tensors(checkpoint["model"], rank0["model"], f"{run}: checkpoint vs rank 0")
    lines = [json.loads(line) for line in (work / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["step"], m["val_images"]) for m in lines] == [(1, 2, 5), (2, 3, 5)]
    assert all(np.isfinite(m["loss"]) for m in lines)


def test_distributed_finetune_two_ranks_match_one_process(work, two_ranks):
    result = _in_process(finetune, ["data", "--model", "start.pt", *TRAIN, "--batch-size", "4", "--output-dir",
                                    "one_frozen", "--max-steps", "3", "--freeze-bn", "--dropout", "0"], work)
    assert result.step == 3
    one, two = result.model.state_dict(), _state(work / "frozen.0.pt")["model"]
    start = mnv3_fast.from_pretrained_state_dict(_state(work / "start.pt")).state_dict()
    # The features (not just the classifier) must have moved, by far more than the tolerance.
    moved = max((one[k] - start[k]).abs().max().item() for k in _params(one) if not k.startswith("out_conv2"))
    assert moved > 1e-4, "the features barely moved: the comparison below would prove nothing"
    for k in one:  # the same images per step, summed in another order: fp32 rounding only
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_distributed_finetune_resumes_to_the_same_state(work, two_ranks):
    straight, resumed = _state(work / "ddp.0.pt"), _state(work / "resumed.0.pt")
    assert straight["step"] == resumed["step"] == 3
    _assert_equal_tensors(resumed["model"], straight["model"], "model after 1 + 2 steps vs 3 steps")
    a, b = resumed["optimizer"], straight["optimizer"]
    assert a["param_groups"] == b["param_groups"]
    for i in b["state"]:
        _assert_equal_tensors(a["state"][i], b["state"][i], f"optimizer state of parameter {i}")
    checkpoint = _state(work / "resumed" / "last.pt")
    assert checkpoint["step"] == 3 and checkpoint["scaler"] == {}  # no fp16: the scaler is off


def test_distributed_checkpoint_loads_into_fast_model_and_reference(work, two_ranks):
    path = str(work / "ddp" / "last.pt")
    fast, ref = finetune.load_trained(path), finetune.load_trained(path, reference=True)
    assert type(fast) is mnv3_fast.MobileNetV3 and type(ref) is mnv3_fast.reference.MobileNetV3
    plain = mnv3_fast.from_pretrained_state_dict(_state(path)["model"])  # the state_dict alone loads too
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(x)
        # (a few steps of fine-tuning can leave logits in the thousands, where fp32's own error on a logit
        # near zero is ~1e-2: the tolerance scales with the largest logit; the reference's error against
        # float64 was as large as mnv3_fast's in the checkpoints that failed a fixed 1e-4)
        atol = 1e-4 * max(1.0, expected.abs().max().item())
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=atol)
        torch.testing.assert_close(plain(x), expected, rtol=1e-4, atol=atol)
    assert _state(path)["classes"] == list(CLASSES)


def test_distributed_finetune_bf16_single_process(work):
    result = _in_process(finetune, ["data", "--model", "start.pt", *TRAIN, "--amp", "bf16", "--output-dir", "bf16",
                                    "--max-steps", "1"], work)
    assert result.step == 1 and np.isfinite(result.metrics[-1]["loss"])
    assert _state(work / "bf16" / "last.pt")["step"] == 1


@pytest.mark.parametrize("source", ["torchvision name", "timm name", "seed checkpoint", "torchvision checkpoint"])
def test_distributed_finetune_starts_from(work, source):
    """What --model accepts (finetune and predict load it the same way): names build randomly initialised
    models offline, files are state_dicts of any layout `from_pretrained_state_dict` reads."""
    if source == "torchvision name":
        model, _ = load_model("mobilenet_v3_small", width_mult=0.5)
    elif source == "timm name":
        pytest.importorskip("timm")
        model, _ = load_model("mobilenetv3_small_050")
    elif source == "seed checkpoint":
        seed = mnv3_fast.reference.MobileNetV3("SMALL", num_classes=3, multiplier=0.5, variant="seed")
        torch.save({"state_dict": seed.state_dict()}, work / "seed.pth")
        model, _ = load_model(str(work / "seed.pth"))
        assert model.config == seed.config
    else:
        model, _ = load_model(str(work / "start.pt"))
    assert type(model) is mnv3_fast.MobileNetV3 and not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_classes)


# ------------------------------------------------------------------ batch inference


def _rows(path):
    return [json.loads(line) for line in open(path)]


def _assert_same_predictions(a: list, b: list):
    assert [r["path"] for r in a] == [r["path"] for r in b]
    assert [r["indices"] for r in a] == [r["indices"] for r in b]
    assert [r["labels"] for r in a] == [r["labels"] for r in b]
    np.testing.assert_allclose([r["scores"] for r in a], [r["scores"] for r in b], rtol=1e-5, atol=1e-6)


def test_distributed_predict_two_ranks_match_one_process(work, two_ranks):
    assert "predict: total 7 images on 2 rank(s)" in two_ranks
    merged = _rows(work / "preds2" / "predictions.jsonl")
    paths = [r["path"] for r in merged]
    assert len(paths) == len(set(paths)) == N_PREDICT  # each image once: none padded in, none dropped
    ranks = [_rows(work / "preds2" / f"predictions.rank{r}.jsonl") for r in (0, 1)]
    assert [len(r) for r in ranks] == [4, 3]
    assert sorted(r["path"] for part in ranks for r in part) == sorted(paths)
    assert all(row["labels"][0] in CLASSES and len(row["scores"]) == 2 for row in merged)

    summary = _in_process(predict, ["images", "--model", "ddp/last.pt", "--output-dir", "preds1", *PREDICT], work)
    assert summary["predicted"] == N_PREDICT and summary["per_rank"][0]["predicted"] == N_PREDICT
    _assert_same_predictions(_rows(work / "preds1" / "predictions.jsonl"), merged)


def test_distributed_predict_resumes(work, two_ranks):
    out = work / "preds_resume"
    shutil.copytree(work / "preds2", out)
    os.remove(out / "predictions.jsonl")
    rank1 = (out / "predictions.rank1.jsonl").read_text().splitlines(keepends=True)
    # Keep one of rank 1's three lines, plus the start of another cut short as by a crash.
    (out / "predictions.rank1.jsonl").write_text(rank1[0] + rank1[1][:20])
    argv = ["images", "--model", "ddp/last.pt", "--output-dir", "preds_resume", *PREDICT]
    summary = _in_process(predict, argv, work)
    assert (summary["resumed"], summary["predicted"]) == (5, 2)
    _assert_same_predictions(_rows(out / "predictions.jsonl"), _rows(work / "preds2" / "predictions.jsonl"))
    summary = _in_process(predict, argv, work)
    assert (summary["resumed"], summary["predicted"], summary["written"]) == (N_PREDICT, 0, N_PREDICT)


# ------------------------------------------------------------------ bad input


def test_distributed_empty_folder_errors(work):
    (work / "empty" / "train").mkdir(parents=True)
    (work / "empty" / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="expected one sub-directory per class"):
        _in_process(finetune, ["empty", "--model", "start.pt", *TRAIN, "--output-dir", "x"], work)
    (work / "empty" / "train" / "a").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images in its 1 class folder\(s\)"):
        _in_process(finetune, ["empty", "--model", "start.pt", *TRAIN, "--output-dir", "x"], work)
    with pytest.raises(ValueError, match="no images in empty"):
        _in_process(predict, ["empty", "--model", "start.pt", "--output-dir", "x", *PREDICT], work)


def test_distributed_non_image_files_are_skipped_with_a_warning(work):
    folder = work / "mixed"
    _write_images(folder, 2, seed=30)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"not a png either")
    argv = ["mixed", "--model", "start.pt", "--output-dir", "preds_mixed", *PREDICT]
    with pytest.warns(UserWarning) as caught:
        summary = _in_process(predict, argv, work)
    messages = " ".join(str(w.message) for w in caught)
    assert "without an image extension" in messages and "notes.txt" in messages
    assert "broken.png: not a readable image" in messages
    assert (summary["predicted"], summary["failed"], summary["written"]) == (2, 1, 2)
    assert len(_rows(work / "preds_mixed" / "predictions.jsonl")) == 2
    with pytest.warns(UserWarning, match="notes.txt"):  # the broken file is recorded, not retried
        summary = _in_process(predict, argv, work)
    assert (summary["resumed"], summary["predicted"], summary["failed"]) == (3, 0, 0)

    # Training replaces an unreadable image by the next readable one (every batch keeps its size).
    shutil.copytree(work / "data", work / "data_broken")
    (work / "data_broken" / "train" / "a" / "0.png").write_bytes(b"garbage")
    (work / "data_broken" / "train" / "a" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning) as caught:
        result = _in_process(finetune, ["data_broken", "--model", "start.pt", *TRAIN, "--output-dir", "broken",
                                        "--max-steps", "5"], work)  # one epoch: every image
    messages = " ".join(str(w.message) for w in caught)
    assert "0.png: not a readable image" in messages and "without an image extension" in messages
    assert result.step == 5


def test_distributed_checkpoint_of_another_architecture_errors(work, two_ranks):
    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.squeezenet1_1(num_classes=3).state_dict(), work / "squeezenet.pt")
    with pytest.raises(ValueError, match="squeezenet.pt: not a MobileNetV3 checkpoint: unrecognised checkpoint"):
        _in_process(predict, ["images", "--model", "squeezenet.pt", "--output-dir", "x", *PREDICT], work)
    with pytest.raises(ValueError, match="squeezenet.pt: not a MobileNetV3 checkpoint"):
        _in_process(finetune, ["data", "--model", "squeezenet.pt", *TRAIN, "--output-dir", "x"], work)
    # Resuming a Small-0.5 run with a Large model.
    shutil.copytree(work / "ddp", work / "mismatch")
    with pytest.raises(ValueError, match=r"mismatch/last.pt holds another network than --model mobilenet_v3_large"):
        _in_process(finetune, ["data", "--model", "mobilenet_v3_large", *TRAIN, "--output-dir", "mismatch"], work)
    (work / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt: not a checkpoint torch.load can read"):
        _in_process(predict, ["images", "--model", "notes.pt", "--output-dir", "x", *PREDICT], work)
    with pytest.raises(ValueError, match="not a model name"):
        _in_process(predict, ["images", "--model", "resnet50", "--output-dir", "x", *PREDICT], work)
