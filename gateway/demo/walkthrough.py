"""The demo's strangler walkthrough: the commands that peel `/orders` off the monolith step by step.

Printed in `peel demo`'s banner. Every line is a command an operator can paste as is (comments after
`#`); the `X-User-Id` header is the cohort key, so the same user keeps seeing the same side.
"""

from __future__ import annotations


def strangler_steps(peel: str, public: str) -> list[str]:
    """The walkthrough lines, for `peel` (the command) and the gateway's public URL."""
    user = f"curl -s -D - -o /dev/null {public}/orders -H 'X-User-Id: user-7' | grep -i x-served-by"
    share = (f"for u in $(seq 1 200); do curl -s -D - -o /dev/null {public}/orders "
             f"-H \"X-User-Id: user-$u\" | grep -i x-served-by; done | sort | uniq -c")
    return [
        "Or strangle /orders gradually (sticky canary, beta users, fallback, rollback):",
        f"  a. {peel} migrate start orders --to orders --cohort-header X-User-Id "
        f"--beta-header X-Beta-User --allow ada --deny bob --reason \"peel orders\"",
        f"     {peel} migrate status orders    # stage legacy: everything still on the monolith",
        f"  b. {peel} migrate shift orders --percent 10    # 10 % of users, chosen by a stable hash",
        f"     {share}",
        f"     {user}    # run it twice: the same user, the same side",
        f"  c. {peel} export | grep -A10 migration    # the migration lives in the rules document",
        f"  d. {peel} migrate promote orders    # everyone on orders-service; the monolith is the "
        "fallback",
        f"     {peel} migrate status orders    # requests per side since the last transition",
        f"  e. {peel} migrate rollback orders --reason \"orders looks wrong\"    # all traffic back "
        "when it returns",
        f"  f. {peel} migrate history orders    # who did what, when, at which config version",
        f"  g. {peel} migrate shift orders --percent 150    # refused: says why, writes nothing",
        "  Beta users are honoured only from facade.trusted_networks or with a signed value:",
        f"     {peel} beta sign ada --ttl 1d    # needs facade.beta_secret in the settings",
    ]
