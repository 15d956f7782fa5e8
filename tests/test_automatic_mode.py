"""The automatic (click-free) mode has ONE sliding-window implementation and ONE precision policy:
``PromptedPredictor.sliding_window_logits``, used by a prompt-free model's ``predict_preprocessed`` and by the
automatic mode of a prompted model (``predict_unprompted``: ``InteractiveSession.auto``, ``predict --auto``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_session import DATASET_JSON, ThresholdOracleNet, _plans


class PrecisionRecordingNet(ThresholdOracleNet):
    """The session's test double, recording the CPU autocast state of every ``forward``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.autocast_seen = []

    def forward(self, image, *args, **kwargs):
        self.autocast_seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().forward(image, *args, **kwargs)


def _predictor(precision: str, prompted: bool):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.inference import PromptedPredictor
    pm = PlansManager(_plans((32, 32, 32)))
    net = PrecisionRecordingNet((32, 32, 32))
    return PromptedPredictor(net, pm, pm.get_configuration("3d_fullres"), DATASET_JSON, "cpu", prompted=prompted,
                             precision=precision), net


def _image():
    img = np.zeros((1, 40, 36, 36), np.float32)
    img[0, 10:22, 8:20, 12:26] = 100.0
    return torch.from_numpy(img)


@pytest.mark.parametrize("precision, expected", [("bf16", (True, torch.bfloat16)), ("fp32", (False, None))])
def test_both_automatic_paths_share_the_sliding_window_and_its_precision(precision, expected, monkeypatch):
    from sam3d_nnunet.inference.prompted_predictor import PromptedPredictor
    from sam3d_nnunet.inference.session import predict_unprompted

    calls = []
    real = PromptedPredictor.sliding_window_logits

    def counting(self, data):
        calls.append(self.prompted)
        return real(self, data)

    monkeypatch.setattr(PromptedPredictor, "sliding_window_logits", counting)
    data = _image()
    free, free_net = _predictor(precision, prompted=False)
    logits = free.predict_preprocessed(data)
    prompted, prompted_net = _predictor(precision, prompted=True)
    probabilities = predict_unprompted(prompted, data, [1])
    assert calls == [False, True], "both paths run PromptedPredictor.sliding_window_logits"
    for net in (free_net, prompted_net):
        assert net.autocast_seen, "the network ran"
        enabled = {seen[0] for seen in net.autocast_seen}
        assert enabled == {expected[0]}, f"{precision}: autocast {net.autocast_seen}"
        if expected[0]:
            assert {seen[1] for seen in net.autocast_seen} == {expected[1]}
    # the same network output, read as logits (prompt-free) or as a margin (prompted automatic mode)
    assert logits.shape == (3, *data.shape[1:]) and logits.dtype == torch.float32
    torch.testing.assert_close(probabilities[1], torch.sigmoid(logits[1]), atol=1e-3, rtol=0)
    inside = probabilities[1][10:22, 8:20, 12:26]
    assert float(inside.min()) > 0.9 and float(probabilities[1][:5].max()) < 0.1


def test_an_ensemble_averages_each_parameter_set_in_both_paths():
    from sam3d_nnunet.inference.session import predict_unprompted
    data = _image()
    for prompted in (False, True):
        predictor, net = _predictor("fp32", prompted=prompted)
        loaded = []
        original = net.load_state_dict

        def recording(state, *args, _original=original, **kwargs):
            loaded.append(float(state["weight"]))
            return _original(state, *args, **kwargs)

        net.load_state_dict = recording
        predictor.list_of_parameters = [{"weight": torch.zeros(1)}, {"weight": torch.ones(1)}]
        if prompted:
            predict_unprompted(predictor, data, [1])
        else:
            predictor.predict_preprocessed(data)
        assert loaded == [0.0, 1.0]
