"""``python -m harness list --params``: parameter counts of the paper suite's configurations on the meta device."""
from __future__ import annotations

import torch

from conftest import cli
from harness.config import load_suite
from harness.params import PAPER_SUITE, count_parameters, suite_parameter_counts
from harness.stages.context import build_tokenizer
from video_tokenizers.coordtok import coordtok_param_counts


def test_paper_suite_counts_exclude_discriminators_and_referenced_runs():
    rows = {r.entry: r for r in suite_parameter_counts(PAPER_SUITE)}
    assert rows["coordtok_l_1280"].parameters == coordtok_param_counts(("L",))["L"]
    assert rows["coordtok_l_1280"].discriminator == 0
    magvit = rows["magvit_ae_l"]
    assert magvit.discriminator > 0 and magvit.parameters > 0
    # VideoFlexTok holds its stage-0 VAE (run:vae_causal, with its VidTok discriminator), counted in its own row only
    flex, vae = rows["videoflextok_k600"], rows["vae_causal"]
    suite = load_suite(PAPER_SUITE, check_data=False)
    entries = {e.id: e for e in suite.tokenizers}
    with torch.device("meta"):
        models = {"vae_causal": build_tokenizer(suite, entries["vae_causal"], {})}
        whole = build_tokenizer(suite, entries["videoflextok_k600"], models)
    assert vae.parameters > 0 and flex.parameters + vae.parameters + vae.discriminator == count_parameters(whole)
    assert flex.published == 570e6 and "adaLN" in flex.source


def test_list_params_prints_the_table(capsys):
    code, out, _ = cli(capsys, "list", "--params")
    assert code == 0
    assert "published (M)" in out and "videoflextok_k600" in out and "magvit_ae_l" in out
