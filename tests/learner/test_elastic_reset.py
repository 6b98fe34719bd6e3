"""EMA update, the reset schedule, and what a reset does (on small modules)."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from learner.elastic_reset import ElasticReset, ResetSchedule, ema_update_, trainable_tensors


def test_ema_update_formula():
    ema = {"w": torch.tensor([1.0, 2.0])}
    ema_update_(ema, {"w": torch.tensor([3.0, 6.0])}, decay=0.75)
    assert_close(ema["w"], torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 6]))
    with pytest.raises(KeyError):
        ema_update_({"x": torch.zeros(1)}, {"w": torch.zeros(1)}, 0.5)


def test_schedule_resets_at_multiples_never_at_zero():
    s = ResetSchedule(3)
    assert [i for i in range(0, 10) if s.is_reset_iteration(i)] == [3, 6, 9]
    assert not ResetSchedule(None).is_reset_iteration(3)
    with pytest.raises(ValueError, match="valid: iteration, epoch, step"):
        ResetSchedule(3, "batch")


def _module():
    torch.manual_seed(0)
    m = nn.Linear(2, 2)
    m.bias.requires_grad_(False)  # a frozen tensor (like a LoRA base) takes no part
    return m


def _nudge(m, amount):
    with torch.no_grad():
        m.weight.add_(amount)


def test_reset_iterations_and_what_is_reset():
    m = _module()
    init_w, bias = m.weight.detach().clone(), m.bias.detach().clone()
    er = ElasticReset(m, ema_decay=0.5, reset_every=2)
    assert set(er.ema) == {"weight"}
    resets = []
    for _ in range(1, 6):
        _nudge(m, 1.0)
        ema_before = er.ema["weight"].clone()
        expected_ema = 0.5 * ema_before + 0.5 * m.weight.detach()
        did = er.end_iteration(m)
        resets.append(did)
        if did:
            assert torch.equal(m.weight.detach(), expected_ema)  # online <- (updated) EMA
            assert torch.equal(er.ema["weight"], init_w)  # EMA <- init
        else:
            assert torch.equal(er.ema["weight"], expected_ema)
        assert torch.equal(m.bias, bias)  # frozen tensors untouched
    assert resets == [False, True, False, True, False]
    assert er.schedule.resets == 2 and er.schedule.iteration == 5


def test_ema_update_per_step_and_epoch():
    # 2 epochs x 3 steps with the online weights at w0 + 1: the EMA moves once per update
    for mode, updates in (("step", 6), ("epoch", 2), ("iteration", 1)):
        m = _module()
        er = ElasticReset(m, ema_decay=0.5, reset_every=100, ema_update=mode)
        w0 = m.weight.detach().clone()
        _nudge(m, 1.0)
        for _ in range(2):
            for _ in range(3):
                er.on_step(m)
            er.on_epoch(m)
        er.end_iteration(m)
        assert_close(er.ema["weight"], w0 + (1 - 0.5**updates))
        assert (er.schedule.step, er.schedule.epoch, er.schedule.iteration) == (6, 2, 1)


def test_state_round_trip():
    m = _module()
    er = ElasticReset(m, ema_decay=0.9, reset_every=3)
    for _ in range(4):
        _nudge(m, 0.5)
        er.end_iteration(m)
    state = er.state_dict()
    m2 = _module()
    er2 = ElasticReset(m2, ema_decay=0.1, reset_every=7)
    er2.load_state_dict(state)
    assert er2.schedule.state_dict() == er.schedule.state_dict()
    assert torch.equal(er2.ema["weight"], er.ema["weight"]) and er2.ema_decay == 0.9
    assert set(trainable_tensors(m2)) == set(er2.ema)


def test_reset_to_init_baseline():
    # target="init": online <- init at each reset, whatever the EMA holds
    m = _module()
    init_w = m.weight.detach().clone()
    er = ElasticReset(m, ema_decay=0.5, reset_every=2, target="init")
    for it in range(1, 5):
        _nudge(m, 1.0)
        expected_ema = 0.5 * er.ema["weight"] + 0.5 * m.weight.detach()
        did = er.end_iteration(m)
        assert did == (it % 2 == 0)
        if did:
            assert torch.equal(m.weight.detach(), init_w)
            assert torch.equal(er.ema["weight"], init_w)  # reset_ema=True: EMA <- init
        else:
            assert torch.equal(er.ema["weight"], expected_ema)


def test_reset_to_ema_without_ema_reset_baseline():
    # reset_ema=False: online <- EMA, and the EMA keeps its value (not sent back to init)
    m = _module()
    er = ElasticReset(m, ema_decay=0.5, reset_every=2, reset_ema=False)
    ema = m.weight.detach().clone()
    for _ in range(4):
        _nudge(m, 1.0)
        ema = 0.5 * ema + 0.5 * m.weight.detach()
        did = er.end_iteration(m)
        assert torch.equal(er.ema["weight"], ema)  # never reset
        if did:
            assert torch.equal(m.weight.detach(), ema)  # online <- EMA
    assert er.schedule.resets == 2


def test_reset_flags_defaults_validation_and_state():
    m = _module()
    er = ElasticReset(m)
    assert (er.target, er.reset_ema) == ("ema", True)  # Elastic Reset itself by default
    with pytest.raises(ValueError, match="valid: ema, init"):
        ElasticReset(m, target="soup")
    er2 = ElasticReset(_module(), target="init", reset_ema=False)
    state = er2.state_dict()
    assert (state["target"], state["reset_ema"]) == ("init", False)
    er.load_state_dict(state)
    assert (er.target, er.reset_ema) == ("init", False)
    for k in ("target", "reset_ema"):  # a state saved before the flags existed
        del state[k]
    er.load_state_dict(state)
    assert (er.target, er.reset_ema) == ("ema", True)


def test_ema_of_bf16_weights_is_kept_in_fp32():
    # 17 updates at eta 0.995 toward a weight 0.01 above the start: the exact EMA moved
    # 0.01 * (1 - 0.995**17) = 0.000818 (bf16 target: 0.000638); in bf16 (resolution 0.0078
    # near 1) every update rounds away and the EMA never moves.
    module = torch.nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        module.weight.fill_(1.0)
    er = ElasticReset(module, ema_decay=0.995, reset_every=100)
    assert er.ema["weight"].dtype == torch.float32 and er.init["weight"].dtype == torch.bfloat16
    with torch.no_grad():
        module.weight.fill_(1.0 + 0.01)
    target = float(module.weight[0, 0])  # 1.0 + 0.01 in bf16
    for _ in range(17):
        er.end_iteration(module)
    moved = float(er.ema["weight"][0, 0]) - 1.0
    assert moved == pytest.approx((target - 1.0) * (1 - 0.995 ** 17), abs=2e-6)  # fp32 ulp
    er.reset(module)  # online <- EMA (cast back to bf16), EMA <- init in fp32 again
    assert module.weight.dtype == torch.bfloat16 and er.ema["weight"].dtype == torch.float32
