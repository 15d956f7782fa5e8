"""The tiny SAM3D learns, and these tests notice when it does not.

Each test trains a tiny ``SAM3DNet`` (random SAM-format weights, ``tiny`` variant, paper MLA decoder, ``click_maps``)
in process for a fixed number of AdamW steps on two-lesion phantoms (``sam3d_nnunet.phantoms.
make_lookalike_lesions_case(alike=False)``: two organs, each with a lesion, one bright and one dark, either drawn as
the tumour), with clicks simulated by the trainer's own ``sample_training_prompt``, then scores held-back phantoms.
Everything is seeded. The demo's lesions look alike, a harder task: with them the adapters' 250 steps gave a 1-click
tumour Dice of 0.372 against 0.325 without a click (measured 2026-12-02), a gain under the test's 0.08.

What is asserted, and why it can fail:
- the loss falls by a stated factor (a trainer whose loss never falls fails);
- the organ's 1-click Dice on held-back phantoms clears a threshold far above the untrained network's;
- the class prompt reaches the decoder: asked for the tumour, the network must not answer with the organ;
- clicks are followed: 1 click on the tumour beats no click and a click on the other lesion (adapters);
- the adapter, LoRA and automatic (``network(image)``, every class at once) variants each learn;
- mutations, each shown to fail in this file: clicks mapped to the wrong voxel (each prompt off by its own offset,
  as when clicks are not moved with the random crop) and the prompted level not fed to the decoder (the visual
  sampler's output replaced by its input, so neither class nor clicks reach the decoder).

The thresholds come from measured runs (the numbers above the constants) with margin.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam3d_nnunet.model import SAM3DNet
from sam3d_nnunet.phantoms import make_lookalike_lesions_case
from sam3d_nnunet.prompts.simulation import protocol_clicks, sample_training_prompt

SHAPE = (32, 32, 32)
N_TRAIN, N_TEST = 16, 8
STEPS = 250
LORA_STEPS = 500  # LoRA learns slower than the adapters
LR = 3e-3


def _phantoms(seed: int, n: int) -> list[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    """(image [1, *SHAPE], label, the other lesion's mask) per case."""
    cases = []
    for i in range(n):
        image, label, decoy = make_lookalike_lesions_case(SHAPE, (1.0, 1.0, 1.0), np.random.default_rng([seed, i]),
                                                          return_decoy=True, alike=False)
        x = (np.clip(image.astype(np.float32), -200, 250) - 50.0) / 100.0  # a CT window, then ~unit scale
        cases.append((torch.from_numpy(x)[None], label.astype(np.int64), decoy))
    return cases


@pytest.fixture(scope="module")
def data():
    return _phantoms(100, N_TRAIN), _phantoms(200, N_TEST)


@pytest.fixture(scope="module")
def adapter_trained(data):
    """The paper's adapters, trained once for the two adapter tests."""
    return train(data[0])


class Trained:
    def __init__(self, net: SAM3DNet, losses: list[float]):
        self.net, self.losses = net, losses

    @property
    def loss_ratio(self) -> float:
        """Mean loss of the first 20 steps over that of the last 20."""
        return float(np.mean(self.losses[:20]) / np.mean(self.losses[-20:]))


def _build(finetune: str, mutation: str | None) -> SAM3DNet:
    torch.manual_seed(0)
    net = SAM3DNet(1, 3, variant="tiny", patch_size=SHAPE, token_stride=4, window_size=4, finetune=finetune,
                   click_maps=True)
    if mutation == "prompted_level_unplugged":
        # the decoder gets the deepest level as the encoder made it: the sampler's output (class, clicks) is lost
        net.prompt_encoder.forward = lambda feature_map, *args, **kwargs: feature_map
    return net


SHIFT_RNG = np.random.default_rng(7)


def _clicks(points: np.ndarray, mutation: str | None) -> torch.Tensor:
    clicks = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(-1, 3)
    if mutation == "clicks_shifted" and len(clicks):
        # clicks not moved with the crop: every prompt off by its own offset of up to a third of the patch
        offset = torch.as_tensor(SHIFT_RNG.integers(-SHAPE[0] // 3, SHAPE[0] // 3 + 1, 3), dtype=torch.float32)
        clicks = (clicks + offset).clamp(0, SHAPE[0] - 1)
    return clicks


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE + 1 - the foreground classes' mean soft Dice over the batch; logits [B, K, *patch], labels [B, *patch]
    (prompted: K = 2 and the binary target; automatic, as ``nnUNetTrainerSAM3D_auto`` trains: every class)."""
    probabilities = logits.softmax(1)
    one_hot = F.one_hot(labels, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    dice = (2 * (probabilities * one_hot).sum(dims) + 1) / (probabilities.sum(dims) + one_hot.sum(dims) + 1)
    return F.cross_entropy(logits, labels) + 1 - dice[1:].mean()


def train(train_cases, finetune: str = "adapter", automatic: bool = False, mutation: str | None = None,
          steps: int = STEPS) -> Trained:
    """``steps`` AdamW steps, batch 2, clicks and classes as the trainer draws them, CE + soft Dice (automatic:
    every class at once, no prompt)."""
    net = _build(finetune, mutation)
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=LR, weight_decay=1e-4)
    losses = []
    for _ in range(steps):
        picked = [train_cases[i][:2] for i in rng.integers(len(train_cases), size=2)]
        if automatic:
            loss = _loss(net(torch.stack([x for x, _ in picked])),
                         torch.stack([torch.from_numpy(label) for _, label in picked]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
            continue
        prompts = [sample_training_prompt(label, [1, 2], rng, max_positive=3, max_negative=3, p_no_click=0.2)
                   for _, label in picked]
        n = max(len(p.click_labels) for p in prompts)
        clicks, labels = torch.zeros(2, n, 3), torch.full((2, n), -1, dtype=torch.long)
        for b, p in enumerate(prompts):
            clicks[b, :len(p.click_labels)] = _clicks(p.clicks, mutation)
            labels[b, :len(p.click_labels)] = torch.as_tensor(p.click_labels)
        image = torch.stack([x for x, _ in picked])
        target = torch.stack([torch.from_numpy(label == p.target_class).long() for (_, label), p in zip(picked, prompts)])
        loss = _loss(net(image, clicks, labels, torch.tensor([p.target_class for p in prompts])), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return Trained(net.eval(), losses)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@torch.no_grad()
def predict(net: SAM3DNet, image: torch.Tensor, class_id: int, points: np.ndarray,
            mutation: str | None = None) -> np.ndarray:
    clicks = _clicks(points, mutation)[None]
    labels = torch.ones(1, clicks.shape[1], dtype=torch.long)
    return net(image[None], clicks, labels, class_id).argmax(1)[0].numpy() == 1


def scores(net: SAM3DNet, test_cases, n_clicks: int, mutation: str | None = None) -> dict[str, float]:
    """Mean over held-back phantoms, seeded clicks (``protocol_clicks``) on the asked class:
    ``organ``: Dice of the organ when asked for the organ; ``tumour_as_organ``: Dice between the answer to
    "tumour" and the ORGAN (a network deaf to the class prompt answers the same to both: high); ``tumour``: the
    tumour's Dice; ``tumour_clicked_on_the_other_lesion``: the tumour's Dice when the clicks go to the other
    lesion (a network that follows clicks segments that one instead: low)."""
    organ, confused, tumour, wrong_place = [], [], [], []
    for j, (image, label, decoy) in enumerate(test_cases):
        asked_organ = predict(net, image, 1, protocol_clicks(label, 1, n_clicks, j), mutation)
        asked_tumour = predict(net, image, 2, protocol_clicks(label, 2, n_clicks, j), mutation)
        on_decoy = predict(net, image, 2, protocol_clicks(decoy.astype(np.uint8), 1, n_clicks, j), mutation)
        organ.append(_dice(asked_organ, label == 1))
        confused.append(_dice(asked_tumour, label == 1))
        tumour.append(_dice(asked_tumour, label == 2))
        wrong_place.append(_dice(on_decoy, label == 2))
    return {"organ": float(np.mean(organ)), "tumour_as_organ": float(np.mean(confused)),
            "tumour": float(np.mean(tumour)), "tumour_clicked_on_the_other_lesion": float(np.mean(wrong_place))}


# ---- thresholds, from measured runs (seed 0, this file's steps and data, 2-core CPU, 2026-12-01) -------------------
# untrained: organ 0.113, tumour 0.020 | adapter (250 steps), two runs (float order differs with the machine's state):
# loss ratio 2.19 / 1.97, organ 0.713 / 0.789, asked-tumour-vs-organ 0.078 / 0.195, 1-click tumour 0.502 / 0.492,
# no click 0.257 / 0.335, click on the other lesion 0.120 / 0.221 | LoRA (500 steps): 2.13 / 3.93, organ 0.815 / 0.835,
# 0.211 / 0.135, tumour 0.595 / 0.631 | automatic (250 steps): 2.27, organ 0.759 | clicks shifted: tumour 0.269 / 0.441, no click 0.264 / 0.436,
# other lesion 0.261 / 0.438 | prompted level unplugged: 1.53, organ 0.660, asked-tumour-vs-organ 0.660.
# A third adapter run with one torch thread (2026-12-02): 1-click tumour 0.348, no click 0.238, other lesion 0.192.
LOSS_FALLS_BY = 1.5
ORGAN_DICE_MIN = 0.5
TUMOUR_DICE_MIN = 0.3
CLICK_GAIN_MIN = 0.08
CONFUSION_MAX = 0.35


def learned(trained: Trained, result: dict[str, float], prompted: bool = True) -> list[str]:
    """What the learning tests require; the failed requirements (empty: it learnt)."""
    failed = []
    if trained.loss_ratio < LOSS_FALLS_BY:
        failed.append(f"loss fell by {trained.loss_ratio:.2f}x < {LOSS_FALLS_BY}x")
    if result["organ"] < ORGAN_DICE_MIN:
        failed.append(f"organ Dice {result['organ']:.3f} < {ORGAN_DICE_MIN}")
    if prompted and result["tumour_as_organ"] > CONFUSION_MAX:
        failed.append(f"asked for the tumour it answers with the organ (Dice {result['tumour_as_organ']:.3f} > "
                      f"{CONFUSION_MAX}): the class prompt does not reach the decoder")
    return failed


def follows_clicks(clicked: dict[str, float], unclicked: dict[str, float]) -> list[str]:
    """What the click test requires; the failed requirements (empty: it follows clicks)."""
    failed = []
    if clicked["tumour"] < TUMOUR_DICE_MIN:
        failed.append(f"1-click tumour Dice {clicked['tumour']:.3f} < {TUMOUR_DICE_MIN}")
    if clicked["tumour"] - unclicked["tumour"] < CLICK_GAIN_MIN:
        failed.append(f"1 click gains {clicked['tumour'] - unclicked['tumour']:.3f} < {CLICK_GAIN_MIN} Dice over none")
    if clicked["tumour"] - clicked["tumour_clicked_on_the_other_lesion"] < CLICK_GAIN_MIN:
        failed.append("a click on the other lesion scores as well as one on the tumour")
    return failed


def test_untrained_network_fails_the_thresholds(data):
    _, test_cases = data
    result = scores(_build("adapter", None).eval(), test_cases, n_clicks=1)
    print("untrained", result)
    assert result["organ"] < ORGAN_DICE_MIN / 2, result


def test_adapter_variant_learns(data, adapter_trained):
    result = scores(adapter_trained.net, data[1], n_clicks=1)
    print("adapter", result, f"loss ratio {adapter_trained.loss_ratio:.2f}")
    assert not learned(adapter_trained, result), (result, adapter_trained.loss_ratio)


def test_lora_variant_learns(data):
    """LoRA learns slower than the adapters (measured at 250 steps: organ 0.77 but asked for the tumour it still
    answered with the organ, Dice 0.59, loss ratio 1.46): it gets twice the steps."""
    train_cases, test_cases = data
    trained = train(train_cases, finetune="lora", steps=LORA_STEPS)
    result = scores(trained.net, test_cases, n_clicks=1)
    print("lora", result, f"loss ratio {trained.loss_ratio:.2f}")
    assert not learned(trained, result), (result, trained.loss_ratio)


def test_adapter_variant_follows_clicks(data, adapter_trained):
    """1 click says which lesion is the tumour: far above the automatic answer and above a click on the other one."""
    trained, test_cases = adapter_trained, data[1]
    clicked, unclicked = scores(trained.net, test_cases, n_clicks=1), scores(trained.net, test_cases, n_clicks=0)
    print("clicks", clicked, "no click", unclicked, f"loss ratio {trained.loss_ratio:.2f}")
    assert not learned(trained, clicked), clicked
    assert not follows_clicks(clicked, unclicked), (clicked, unclicked)


def test_automatic_variant_learns(data):
    """The prompt-free variant: the organ from ``network(image)``'s argmax over every class."""
    train_cases, test_cases = data
    trained = train(train_cases, automatic=True)
    with torch.no_grad():
        organ = np.mean([_dice(trained.net(image[None]).argmax(1)[0].numpy() == 1, label == 1)
                         for image, label, _ in test_cases])
    print("auto", organ, f"loss ratio {trained.loss_ratio:.2f}")
    assert not learned(trained, {"organ": float(organ)}, prompted=False), (organ, trained.loss_ratio)


def test_shifted_clicks_fail_the_click_test(data):
    """The mutation check: clicks mapped to the wrong voxel (each prompt off by its own offset, as when clicks are
    not moved with nnU-Net's random crop), in training and in use, must fail the click test."""
    train_cases, test_cases = data
    trained = train(train_cases, mutation="clicks_shifted")
    clicked = scores(trained.net, test_cases, n_clicks=1, mutation="clicks_shifted")
    unclicked = scores(trained.net, test_cases, n_clicks=0, mutation="clicks_shifted")
    failed = follows_clicks(clicked, unclicked)
    print("shifted", clicked, "no click", unclicked, failed)
    assert failed, (clicked, unclicked)


def test_unplugged_prompted_level_fails_the_learning_test(data):
    """The mutation check: the same training with the sampler's output not fed to the decoder must fail."""
    train_cases, test_cases = data
    trained = train(train_cases, mutation="prompted_level_unplugged")
    result = scores(trained.net, test_cases, n_clicks=1, mutation="prompted_level_unplugged")
    failed = learned(trained, result)
    print("unplugged", result, f"loss ratio {trained.loss_ratio:.2f}", failed)
    assert any("does not reach the decoder" in f for f in failed), (result, failed)
