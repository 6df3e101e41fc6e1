"""Human gold: blind A/B judging of eval samples and its statistics (issue #22).

``stats`` (Wilson intervals, Bradley–Terry, Cohen's and Fleiss' kappa), ``pairs`` (which
samples are judged against which, balanced over prompts), ``sessions`` (the store-backed
service the web page and the CLI share) and ``cli`` (``grpo-guard judge`` / ``judgments``).
Imports no torch.
"""
