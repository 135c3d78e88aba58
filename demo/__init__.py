"""The harness that drives both sides of the wire: the issuer (`processor`, `hsm_sim`) and the outside world
(`terminal_sim`), in one process.

    python -m demo [--json] [--seconds S] [--workdir DIR]   a whole simulated business day (`scripts/demo`)
    python -m demo.bench_vault                             what the PAN vault costs the engine
    python -m demo.bench_ledger                            the store's group-committed write path alone

It may import any of the three programs; none of them imports it (`processor demo` starts it as a program).
"""
