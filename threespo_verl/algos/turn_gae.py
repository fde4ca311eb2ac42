"""Turn-level GAE (``turn_gae``, DESIGN §3): generalized advantage estimation over the *turns* of a trajectory row.

A trajectory row (``rollout/trajectory.py``) holds a whole episode: response = A_0 C_0 U_1 A_1 ... U_T-1 A_T-1 with
``response_mask`` 1 exactly on the generated action tokens A_t. Every action turn is one contiguous run of 1s (the
template tokens C_t and the next user turn U_t+1 between two replies are never empty), so turn t is the t-th run of
1s of the mask: tokens s_t .. e_t. Step t's reward sits at its closing token e_t.

Per turn t of a row with T turns (gamma and lambda apply once per turn, i.e. per environment step)::

    r_t      = sum_{j = s_t .. e_t} reward_j         the turn's reward (rewards on masked tokens are ignored, as in
                                                     verl's token-level ``gae``)
    V_t      = values[s_t]                           the value read at the turn's first action token
    delta_t  = r_t + gamma V_t+1 - V_t               V_T = 0 (nothing is bootstrapped after the row's last turn)
    A_t      = delta_t + gamma lambda A_t+1          A_T = 0
    G_t      = A_t + V_t                             the critic's target (lambda-return of turn t)

and A_t, G_t are written on every action token of turn t, 0 on observation and padding tokens.

**Where V is read.** verl's critic predicts ``values[i]`` for response position i from the value head's output at
the token *before* it (``verl.workers.utils.padding.response_from_nested`` shifts the model output left by one, as
for log-probs): values[i] is the value of the prefix that token i is generated from. At i = s_t that prefix is the
whole context of turn t (every earlier turn and the user turn U_t, generation prompt included) and nothing of the
reply: V_t = values[s_t] is V(s_t), the value of the state the turn's action is taken in, which is what delta_t needs.

**Where the returns go.** verl's value loss compares values with returns on every ``response_mask`` token. G_t is
written on every action token of turn t, so the critic learns the same target at each of them: at s_t that is the
value read above; at a later token of the turn it is the value of the state with a partial reply, whose target is the
same lambda-return (no reward arrives and no discount applies inside a turn). The estimate at s_t is thus trained
directly, and the other positions learn a consistent target instead of a conflicting per-token one.

Rows of different turn counts share a batch: turn tensors are padded to the batch's largest T with zeros, and the
recursion runs once per turn position, vectorised over rows (T passes, as verl's ``gae`` makes one per token).
"""

from __future__ import annotations

import torch


def turn_index(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The turns of each row: every contiguous run of 1s in ``response_mask`` is one action turn.

    Args:
        response_mask: ``(bs, response_length)``, 1 on action tokens, 0 on observation and padding tokens.

    Returns:
        turn: ``(bs, response_length)`` int64, the 0-based turn of each action token (0 on masked tokens).
        first: ``(bs, response_length)`` bool, True on the first token s_t of each turn.
        n_turns: ``(bs,)`` int64, the number of turns T of each row (0 for a row without action tokens).
    """
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (bs, response_length), got shape {tuple(response_mask.shape)}")
    m = response_mask.bool()
    before = torch.zeros_like(m)
    before[:, 1:] = m[:, :-1]
    first = m & ~before
    turn = (torch.cumsum(first.long(), dim=1) - 1).clamp(min=0) * m.long()
    return turn, first, first.long().sum(dim=1)


def turn_gae_advantage_return(token_level_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor,
                              gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn-level GAE of the module docstring, unwhitened.

    Args:
        token_level_rewards: ``(bs, response_length)``; step t's reward at its closing token (summed over the turn's
            action tokens, so a per-token KL penalty in the reward is part of r_t).
        values: ``(bs, response_length)``, the critic's values (values[i]: the value of the prefix token i is
            generated from); only values[s_t] are read.
        response_mask: ``(bs, response_length)``, 1 on action tokens; each run of 1s is one turn.
        gamma: discount per turn (per environment step), in [0, 1].
        lam: GAE lambda per turn, in [0, 1].

    Returns:
        advantages: ``(bs, response_length)``, A_t on every action token of turn t, 0 elsewhere.
        returns: ``(bs, response_length)``, G_t = A_t + V_t on every action token of turn t, 0 elsewhere.
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"turn_gae needs gamma and lambda in [0, 1], got gamma={gamma}, lambda={lam}")
    if not (token_level_rewards.shape == values.shape == response_mask.shape):
        raise ValueError(f"token_level_rewards {tuple(token_level_rewards.shape)}, values {tuple(values.shape)} and "
                         f"response_mask {tuple(response_mask.shape)} must have the same (bs, response_length) shape")
    with torch.no_grad():
        mask = response_mask.to(token_level_rewards.dtype)
        turn, first, n_turns = turn_index(response_mask)
        bs = token_level_rewards.shape[0]
        width = max(int(n_turns.max()) if bs else 0, 1)
        r = torch.zeros(bs, width, dtype=token_level_rewards.dtype, device=token_level_rewards.device)
        r.scatter_add_(1, turn, token_level_rewards * mask)  # r_t: the turn's rewards, masked tokens dropped
        v = torch.zeros_like(r)
        rows, cols = first.nonzero(as_tuple=True)
        v[rows, turn[rows, cols]] = values[rows, cols].to(r.dtype)  # V_t = values[s_t]
        valid = (torch.arange(width, device=r.device).unsqueeze(0) < n_turns.unsqueeze(1)).to(r.dtype)
        adv = torch.zeros_like(r)
        next_v = torch.zeros(bs, dtype=r.dtype, device=r.device)
        next_a = torch.zeros_like(next_v)
        for t in reversed(range(width)):
            delta = r[:, t] + gamma * next_v - v[:, t]
            a = (delta + gamma * lam * next_a) * valid[:, t]
            adv[:, t] = a
            next_v, next_a = v[:, t], a  # 0 past a row's last turn (v and a are 0 there)
        ret = adv + v
        advantages = adv.gather(1, turn) * mask
        returns = ret.gather(1, turn) * mask
    return advantages, returns
