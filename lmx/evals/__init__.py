"""Long-context evaluations (DESIGN §5), usable from Python and from the ``lmx`` command line.

=================  ==============================================================  ============================
command            what                                                            module
=================  ==============================================================  ============================
``lmx passkey``    seed 000's passkey prompt, accuracy per length x RoPE setting    ``passkey.run_passkey``
``lmx niah``       needle in a haystack, lengths x depths, heatmap                  ``niah.run_niah``
``lmx ppl``        perplexity vs context length per RoPE setting, line plot         ``ppl.run_ppl``
``lmx repeat``     seed 003's "return the last n words" task, Levenshtein ratio    ``repeat.run_repeat``
``lmx longbench``  LongBench JSONL tasks: templates, middle truncation, metrics      ``longbench.run_longbench``
``lmx demo``       the main job (``make run``)                                      ``demo.run_demo``
=================  ==============================================================  ============================

Every ``run_*`` takes a *pipeline factory* (``factory(RopeSetting) -> pipeline``) and a list of
``RopeSetting``; ``common.engine_factory(model, session_len=...)`` builds real ``lmx`` pipelines:

    from lmx.evals.common import RopeSetting, engine_factory
    from lmx.evals.passkey import run_passkey
    factory = engine_factory("smollm2-135m", session_len=16384)
    result = run_passkey(factory, [RopeSetting("default"), RopeSetting("dynamic", 2.0)], [4096, 15360], rounds=2)
    result["summary"]   # [{"setting": "default", "length": 4096, "correct": 2, "accuracy": 100.0, ...}, ...]

The scoring functions are in ``metrics`` (pure functions of strings), the figures in ``plots``, the terminal
tables and JSON in ``report``.
"""
