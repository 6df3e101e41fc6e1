"""Every shipped example config passes ``grpo-guard config validate`` and names only
registered rewards."""

import glob
import os

import pytest
from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.config import RunConfig
from grpo_guard.rewards import REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml")))


def test_the_paper_examples_exist():
    names = {os.path.basename(p) for p in EXAMPLES}
    assert {"sd35m_grpo_guard.yaml", "sd35m_flow_grpo.yaml", "flux_dance_grpo_guard.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_validates(path):
    res = CliRunner().invoke(main, ["config", "validate", path])
    assert res.exit_code == 0, f"{os.path.basename(path)} does not validate:\n{res.output}"
    cfg = RunConfig.from_file(path)
    unknown = [n for n in [*cfg.rewards, *cfg.gold] if n not in REGISTRY]
    assert not unknown, f"{os.path.basename(path)} names unregistered rewards: {unknown}"


def test_paper_hyperparameters_of_the_examples():
    """ALGORITHM.md §5: the values that distinguish Guard from the baseline."""
    guard = RunConfig.from_file(os.path.join(ROOT, "examples", "sd35m_grpo_guard.yaml"))
    base = RunConfig.from_file(os.path.join(ROOT, "examples", "sd35m_flow_grpo.yaml"))
    flux = RunConfig.from_file(os.path.join(ROOT, "examples", "flux_dance_grpo_guard.yaml"))
    assert (guard.learning_rate, guard.clip_range, guard.kl_beta, guard.std_scope) == (1e-4, 2e-6, 0.0, "group")
    assert (base.learning_rate, base.clip_range, base.kl_beta, base.std_scope) == (3e-4, 1e-4, 0.04, "global")
    assert guard.ratio_norm and guard.grad_reweight and not base.ratio_norm
    for c in (guard, base):
        assert (c.group_size, c.prompts_per_epoch, c.num_steps, c.cfg_scale, c.lora_rank) == (24, 48, 10, 4.5, 32)
        n_batches = c.samples_per_epoch() // c.train_batch_size
        assert n_batches // c.gradient_accumulation_steps == 2, "2 optimizer steps per epoch"
    assert (flux.dynamics, flux.noise_level, flux.num_steps, flux.learning_rate, flux.clip_range) == \
        ("dance_grpo", 0.3, 16, 2e-4, 2e-6)
    assert flux.init_same_noise and flux.train_timesteps == "random" and flux.timestep_fraction == 0.6


def test_the_geneval_examples_score_as_flow_grpo_and_evaluate_four_images_per_prompt():
    """Issue 19: Flow-GRPO's reward-server partial credit for RL, GenEval's 4 images per prompt at
    eval, and training prompts that share none with the eval prompts."""
    for name in ("sd35m_geneval_grpo_guard.yaml", "sd35m_geneval_flow_grpo.yaml"):
        cfg = RunConfig.from_file(os.path.join(ROOT, "examples", name))
        assert cfg.reward_options["geneval"]["score"] == "flow_grpo", name
        assert list(cfg.eval_seeds) == [0, 1, 2, 3], name
        assert (cfg.prompts, cfg.eval_prompts) == ("geneval:train", "geneval:test"), name
        assert cfg.prompt_overlap_warning() is None, name
