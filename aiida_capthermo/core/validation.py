"""Validation of the two models on the MD frames that Eg(x, T) averages over: which frames, and their errors.

Frame selection. Each MD replica is a correlated series of recorded frames; its production region starts at its
equilibration start ``start`` (detected by :func:`aiida_capthermo.core.thermal.series_statistics`) and frames that
are at least the statistical inefficiency ``g`` apart are effectively uncorrelated. :func:`select_frames` spreads
a budget of ``per_point`` frames per (x, T) over the replicas of that (x, T) as evenly as their capacity allows
and picks, in each replica, frames of its production region that are at least ``spacing = max(min_spacing,
ceil(g))`` recorded frames apart: a grid of that spacing with a random offset, of which a random subset is kept
when the grid holds more frames than the replica's share. The same seed picks the same frames.

Errors per (x, T) (:func:`validation_rows`), on the frames labelled by the teacher:

* the MLIP (MACE) against the low-fidelity labels: force MAE and RMSE over Cartesian components (eV/Å),
  energy-per-atom MAE and bias (mean of reference minus model, eV/atom);
* the gap GNN against the teacher: the bias ``mean(teacher - GNN)`` with its standard error, MAE and RMSE (eV),
  from :func:`paired_difference`;
* the teacher's own mean gap with its standard error (eV), and the number of frames;
* the potential's sampling error (:func:`sampling_shift`): how far the teacher's gap averaged over the low
  engine's own Boltzmann distribution lies from its average over the potential's MD frames, to first order in the
  energy difference of the two on those frames.

The picked frames are spaced by at least the statistical inefficiency, so they count as independent: a standard
error is ``std(values, ddof=1) / sqrt(n)``, None for fewer than two frames.

No AiiDA and no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ['replica_labels', 'replica_bias_error', 'allocate_budget', 'grid_indices', 'select_frames', 'spread_subset',
           'vegard_deviations', 'pressure', 'paired_difference', 'mean_with_stderr', 'force_errors', 'point_key',
           'sampling_shift', 'energy_spread', 'validation_rows']

#: beta * std(E_low - E_MLIP) over the frames of an (x, T) up to which the first-order sampling shift is taken as
#: the shift (the next order is about beta * sigma / 2 of it); beyond, it is an order of magnitude, not a bound
#: (a potential 3x too soft: first order 1.0 eV for an exact 0.33 eV).
PERTURBATIVE_LIMIT = 1.0


def allocate_budget(capacities: Sequence[int], budget: int) -> list[int]:
    """Share ``budget`` frames among series round-robin, none above its capacity.

    Parameters
    ----------
    capacities
        [n_series] the most frames each series can give (its production frames at the required spacing).
    budget
        Frames wanted in total.

    Returns
    -------
    list of int
        [n_series] frames from each series; they sum to ``min(budget, sum(capacities))`` and differ by at most one
        between series that are not at their capacity.
    """
    if budget < 0:
        raise ValueError(f'budget must be >= 0, got {budget}')
    shares = [0] * len(capacities)
    remaining = min(budget, int(sum(capacities)))
    while remaining:
        for index, capacity in enumerate(capacities):
            if remaining and shares[index] < capacity:
                shares[index] += 1
                remaining -= 1
    return shares


def grid_indices(start: int, stop: int, spacing: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` frame indices in ``[start, stop)``, sorted, any two at least ``spacing`` apart.

    A grid ``start + offset + k * spacing`` with a random ``offset`` in ``[0, spacing)`` that still leaves the
    grid its full length; when the grid holds more than ``n`` frames a random subset of ``n`` is kept.
    """
    if spacing < 1:
        raise ValueError(f'spacing must be at least 1 frame, got {spacing}')
    length = stop - start
    if length <= 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    capacity = (length - 1) // spacing + 1
    slack = length - 1 - (capacity - 1) * spacing  # offsets that keep every grid point inside
    offset = int(rng.integers(0, slack + 1))
    grid = start + offset + spacing * np.arange(capacity)
    if capacity > n:
        grid = np.sort(rng.choice(grid, size=n, replace=False))
    return grid.astype(np.int64)


def point_key(x: float, temperature: float, key: str | None = None) -> str:
    """Key of one validation point: the structure's when known (``x_0p500_c003_T300``: configurations of one
    composition are validated apart), else the composition's (``x0.5000_T300``)."""
    return f'{key}_T{temperature:.0f}' if key else f'x{x:.4f}_T{temperature:.0f}'


def select_frames(series: Sequence[dict], per_point: int, min_spacing: int = 1, seed: int = 0) -> list[dict]:
    """Pick decorrelated production frames, ``per_point`` per point (structure and T, or (x, T) where the replicas
    carry no structure key), spread over the replicas of each point.

    Parameters
    ----------
    series
        One dict per replica: ``x``, ``temperature`` (K), ``offset`` (index of its first frame in the frames
        dataset), ``n_frames``, ``start`` (first production frame, counted from the replica's first frame) and,
        optionally, ``inefficiency`` (statistical inefficiency g of the replica, in frames), ``replica`` (an id
        carried into the result) and ``key`` (the structure it started from: points per structure and T).
    per_point
        Frames wanted per (x, T) (the labelling budget).
    min_spacing
        Smallest distance between two picked frames of one replica, in recorded frames; a replica's own ``ceil(g)``
        wins when larger.
    seed
        Seed of the random offsets and subsets.

    Returns
    -------
    list of dict
        Per picked frame, sorted by its index: ``index`` (in the frames dataset), ``x``, ``temperature``, ``key``,
        ``point`` (:func:`point_key`), ``replica`` and ``spacing`` (frames) of its replica.
    """
    if per_point < 1:
        raise ValueError(f'per_point must be at least 1, got {per_point}')
    if min_spacing < 1:
        raise ValueError(f'min_spacing must be at least 1, got {min_spacing}')
    rng = np.random.default_rng(seed)
    groups: dict[str, list[dict]] = {}
    for position, record in enumerate(series):
        key = point_key(float(record['x']), float(record['temperature']), record.get('key'))
        start = int(record.get('start', 0))
        if not 0 <= start <= int(record['n_frames']):
            raise ValueError(f'replica {record.get("replica", position)}: start {start} outside its '
                             f'{record["n_frames"]} frames')
        inefficiency = record.get('inefficiency')
        spacing = max(int(min_spacing), int(math.ceil(inefficiency)) if inefficiency else 1)
        groups.setdefault(key, []).append({**record, 'start': start, 'spacing': spacing,
                                           'replica': record.get('replica', position)})
    picked = []
    for key in sorted(groups):
        members = groups[key]
        capacities = [max(0, (int(m['n_frames']) - m['start'] - 1) // m['spacing'] + 1)
                      if int(m['n_frames']) > m['start'] else 0 for m in members]
        for member, share in zip(members, allocate_budget(capacities, per_point)):
            for local in grid_indices(member['start'], int(member['n_frames']), member['spacing'], share, rng):
                picked.append({'index': int(member['offset']) + int(local), 'x': float(member['x']),
                               'temperature': float(member['temperature']), 'key': member.get('key'), 'point': key,
                               'replica': member['replica'], 'spacing': member['spacing']})
    return sorted(picked, key=lambda frame: frame['index'])


def spread_subset(x: Sequence[float], temperature: Sequence[float], n: int, seed: int = 0) -> list[int]:
    """``n`` structures spread evenly over the (x, T) points of a set (:func:`allocate_budget`), drawn at random
    within each point; the indices are sorted. All of them when ``n`` is at least the size of the set."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for index, (x_value, t_value) in enumerate(zip(x, temperature)):
        groups.setdefault(point_key(float(x_value), float(t_value)), []).append(index)
    keys = sorted(groups)
    picked = []
    for key, share in zip(keys, allocate_budget([len(groups[key]) for key in keys], n)):
        picked.extend(int(i) for i in rng.choice(groups[key], size=share, replace=False))
    return sorted(picked)


def pressure(stress: Sequence[float]) -> float:
    """Pressure (GPa) of a Voigt stress (eV/Å^3, ASE's sign: positive is tensile): ``-(s_xx + s_yy + s_zz) / 3``.
    A relaxed structure sits at zero pressure of the potential that relaxed it; the teacher's pressure there says
    how far the potential's equation of state is from the teacher's (for a bulk modulus B, ``dV/V = P / B``)."""
    from aiida_capthermo.core.constants import EV_PER_A3_TO_GPA

    return float(-np.mean(np.asarray(stress, dtype=float)[:3]) * EV_PER_A3_TO_GPA)


def vegard_deviations(x: Sequence[float], volume_per_atom: Sequence[float]) -> list[float | None]:
    """Relative deviation of each relaxed structure's volume per atom from Vegard's law, ``V / V_Vegard(x) - 1``,
    with ``V_Vegard(x) = (1 - x) V(x = 0) + x V(x = 1)`` taken from the end members among the structures (the mean
    when several have x = 0 or 1). None for every structure when either end member is missing.

    A relaxed solid solution far from Vegard's volume (several %) sits where the potential was not checked: its
    energy ranking and its gaps need the teacher's look.
    """
    x = np.asarray(x, dtype=float)
    volume = np.asarray(volume_per_atom, dtype=float)
    ends = [volume[np.isclose(x, end)] for end in (0.0, 1.0)]
    if any(values.size == 0 for values in ends):
        return [None] * len(x)
    host, guest = (float(values.mean()) for values in ends)
    return [float(v / ((1 - xi) * host + xi * guest) - 1.0) for xi, v in zip(x, volume)]


def mean_with_stderr(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error ``std(ddof=1) / sqrt(n)`` of independent samples (None where undefined)."""
    values = np.asarray(values, dtype=float).reshape(-1)
    if values.size == 0:
        return None, None
    mean = float(values.mean())
    if values.size < 2:
        return mean, None
    return mean, float(values.std(ddof=1) / np.sqrt(values.size))


def paired_difference(reference: Sequence[float], predicted: Sequence[float]) -> dict:
    """Bias of a model from paired samples: ``d = reference - predicted``.

    Returns
    -------
    dict
        ``bias`` = mean(d), ``stderr`` = std(d, ddof=1) / sqrt(n) (None for n < 2), ``mae`` = mean|d|,
        ``rmse`` = sqrt(mean(d^2)), ``n``; in the units of the inputs (None for no pair).
    """
    reference = np.asarray(reference, dtype=float).reshape(-1)
    predicted = np.asarray(predicted, dtype=float).reshape(-1)
    if reference.shape != predicted.shape:
        raise ValueError(f'{reference.size} reference values for {predicted.size} predictions')
    difference = reference - predicted
    bias, stderr = mean_with_stderr(difference)
    if bias is None:
        return {'bias': None, 'stderr': None, 'mae': None, 'rmse': None, 'n': 0}
    return {'bias': bias, 'stderr': stderr, 'mae': float(np.abs(difference).mean()),
            'rmse': float(np.sqrt(np.mean(difference**2))), 'n': int(difference.size)}


def replica_labels(replicas: Sequence[str | None] | None, n: int) -> list[str]:
    """A label per frame: its replica's, or its own where the replica is None (``replicas`` None: all its own)."""
    replicas = [None] * n if replicas is None else replicas
    labels = [f'frame {index}' if replica is None else str(replica) for index, replica in enumerate(replicas)]
    if len(labels) != n:
        raise ValueError(f'{len(labels)} replica labels for {n} frames')
    return labels


def replica_bias_error(difference: Sequence[float], replicas: Sequence[str | None]) -> dict:
    """Standard error of a mean bias whose frames come from a few MD replicas.

    Frames of one replica share its history: a replica that has settled into another distortion than the others
    shifts the model's error on all its frames at once. The standard error over the frames sees only their scatter;
    the standard error from the spread of the replicas' own mean biases sees the part that differs between
    replicas. As for the thermal average itself (:func:`aiida_capthermo.core.thermal.combine_replicas`), the larger
    of the two is the error, and its Student factor takes the samples it came from (frames, or replicas).

    Parameters
    ----------
    difference
        [n] teacher - model on each frame (eV).
    replicas
        [n] the replica of each frame (None: a frame of its own, e.g. a relaxed 0 K structure).

    Returns
    -------
    dict
        ``stderr`` (the larger), ``stderr_frames``, ``stderr_replicas`` (None with fewer than 2 replicas),
        ``n_replicas``, ``n`` (the samples behind ``stderr``: frames or replicas); None errors for fewer than 2
        frames.
    """
    difference = np.asarray(difference, dtype=float).reshape(-1)
    labels = replica_labels(replicas, difference.size)
    frames = mean_with_stderr(difference)[1]
    means = [float(difference[[i for i, label in enumerate(labels) if label == name]].mean())
             for name in dict.fromkeys(labels)]
    across = float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else None
    if frames is None:
        return {'stderr': None, 'stderr_frames': None, 'stderr_replicas': across, 'n_replicas': len(means),
                'n': int(difference.size)}
    wins = across is not None and across > frames
    return {'stderr': across if wins else frames, 'stderr_frames': frames, 'stderr_replicas': across,
            'n_replicas': len(means), 'n': len(means) if wins else int(difference.size)}


def force_errors(reference: np.ndarray, predicted: np.ndarray) -> dict:
    """MAE and RMSE (eV/Å) over every Cartesian component of ``[n_atoms, 3]`` force arrays (rows with a NaN
    reference are left out)."""
    reference = np.asarray(reference, dtype=float).reshape(-1, 3)
    predicted = np.asarray(predicted, dtype=float).reshape(-1, 3)
    keep = np.all(np.isfinite(reference), axis=1) & np.all(np.isfinite(predicted), axis=1)
    if not keep.any():
        return {'mae': None, 'rmse': None, 'n_atoms': 0}
    difference = reference[keep] - predicted[keep]
    return {'mae': float(np.abs(difference).mean()), 'rmse': float(np.sqrt(np.mean(difference**2))),
            'n_atoms': int(keep.sum())}


def sampling_shift(gaps: Sequence[float], energy_reference: Sequence[float], energy_predicted: Sequence[float],
                   temperature: float, replicas: Sequence[str | None] | None = None) -> dict:
    """First-order estimate of the potential's sampling error of a thermal average of the gap.

    The MD samples configurations with the potential's Boltzmann weight exp(-beta U_MLIP); the thermal average the
    study wants is over the low engine's, exp(-beta U_low). With ``dU = U_low - U_MLIP`` on decorrelated frames of
    the MLIP's MD (any constant offset cancels), reweighting gives ``<g>_low = <g e^{-beta dU}> / <e^{-beta dU}>``,
    and to first order in dU (linear response)::

        shift = <g>_low - <g>_MLIP = -beta cov(g, dU)

    Exponential weights are not used: with a few frames and beta * std(dU) above 1 one frame carries them all. The
    first order is the shift while ``beta * std(dU)`` (``beta_sigma``) is small (:data:`PERTURBATIVE_LIMIT`);
    beyond, it is an order of magnitude only, and says the potential's distribution differs from the engine's by
    more than kT.

    **Frames of a few replicas.** The frames are spaced by the gap's statistical inefficiency within their replica,
    but a replica that has settled into its own slow state (another distortion, another arrangement of mobile ions)
    shifts the gap and dU of all its frames at once. The covariance is then mostly *between* replicas, and the
    plain sample covariance over the frames is biased low (with three replicas by about a third of the between
    part) while its jackknife over frames sees only the scatter within replicas. With ``replicas`` and at least
    three of them, the covariance is estimated by its variance components,
    ``cov = W + B - W * mean(1 / n_r)`` (``W`` the pooled covariance within replicas, ``B`` that of the replicas'
    means, ``n_r`` the frames of replica r), which is unbiased whatever the split between the two. Its standard
    error is, as for the GNN's bias (:func:`replica_bias_error`), the larger of the jackknife over replicas (one
    replica left out at a time) and that over frames, and the Student factor of the budget takes the samples it
    came from (``stderr_n``: replicas or frames): three replicas can agree by chance. With fewer than three
    replicas (or none given) the frames are taken as independent: the plain covariance (ddof 1) and its jackknife
    over frames.

    Parameters
    ----------
    gaps
        [n] eV: the teacher's gap of each frame.
    energy_reference, energy_predicted
        [n] eV: the low engine's and the MLIP's total energies of the same frames (frames with a NaN are left out).
    temperature
        K, of the MD the frames come from.
    replicas
        [n] the MD replica of every frame (None: a frame of its own); None: every frame independent.

    Returns
    -------
    dict
        ``shift`` and ``shift_stderr`` (eV), ``beta_sigma`` (dimensionless, over all frames), ``correlation``
        (Pearson's r of the gap and dU over the frames: near 0, the potential's energy error is noise to the gap;
        near -1 or 1, the potential is wrong along the coordinates that set the gap, and the shift is systematic),
        ``n`` (frames), ``n_replicas``, ``stderr_n`` (the samples behind ``shift_stderr``: replicas or frames);
        None values for T = 0 or fewer than 3 frames (the correlation also where the gaps or dU do not vary).
    """
    from aiida_capthermo.core.constants import KB_EV

    gaps = np.asarray(gaps, dtype=float).reshape(-1)
    delta = np.asarray(energy_reference, dtype=float).reshape(-1) \
        - np.asarray(energy_predicted, dtype=float).reshape(-1)
    if delta.size != gaps.size:
        raise ValueError(f'{gaps.size} gaps and {delta.size} energy differences')
    labels = np.array(replica_labels(replicas, gaps.size))
    keep = np.isfinite(gaps) & np.isfinite(delta)
    gaps, delta, labels = gaps[keep], delta[keep], labels[keep]
    n = int(gaps.size)
    groups = list(dict.fromkeys(labels))
    clustered = 3 <= len(groups) < n
    if temperature <= 0 or n < 3:
        return {'shift': None, 'shift_stderr': None, 'beta_sigma': None, 'correlation': None, 'n': n,
                'n_replicas': len(groups), 'stderr_n': None}
    beta = 1.0 / (KB_EV * temperature)

    def first_order(g: np.ndarray, d: np.ndarray, names: np.ndarray) -> float:
        if not clustered:
            return float(-beta * np.cov(g, d, ddof=1)[0, 1])
        members = [names == name for name in dict.fromkeys(names)]
        sizes = np.array([member.sum() for member in members])
        within_dof = g.size - len(members)
        within = sum(float(np.sum((g[m] - g[m].mean()) * (d[m] - d[m].mean()))) for m in members) / within_dof \
            if within_dof > 0 else 0.0
        between = float(np.cov([g[m].mean() for m in members], [d[m].mean() for m in members], ddof=1)[0, 1])
        return float(-beta * (within + between - within * np.mean(1.0 / sizes)))

    def jackknife(masks: list[np.ndarray]) -> float:
        values = np.array([first_order(gaps[~mask], delta[~mask], labels[~mask]) for mask in masks])
        return float(np.sqrt((len(masks) - 1) / len(masks) * np.sum((values - values.mean()) ** 2)))

    shift = first_order(gaps, delta, labels)
    stderr, stderr_n = jackknife([np.arange(n) == index for index in range(n)]), n
    if clustered:  # as for the bias: the larger of the two, with the samples it came from
        across = jackknife([labels == group for group in groups])
        if across > stderr:
            stderr, stderr_n = across, len(groups)
    spread = gaps.std() > 0 and delta.std() > 0
    return {'shift': shift, 'shift_stderr': stderr, 'beta_sigma': float(beta * delta.std(ddof=1)),
            'correlation': float(np.corrcoef(gaps, delta)[0, 1]) if spread else None, 'n': n,
            'n_replicas': len(groups), 'stderr_n': stderr_n}


def energy_spread(x: Sequence[float], temperature: Sequence[float], energy_reference: Sequence[float],
                  energy_predicted: Sequence[float]) -> list[dict]:
    """How far the potential's Boltzmann distribution is from the engine's, per (x, T) of MD frames.

    ``dU = U_engine - U_MLIP`` per frame; its spread over the frames of one (x, T) against ``k_B T``,
    ``beta_sigma = std(dU) / (k_B T)`` (ddof 1; a constant offset cancels), is the measure of
    :func:`sampling_shift`: the first-order sampling shift is to be trusted where it is at most
    :data:`PERTURBATIVE_LIMIT`, and where it is large the potential's MD samples another distribution than the
    engine's. Unlike the force error it grows with the cell (``std(dU)`` of N atoms with independent errors goes
    as ``sqrt(N)``): it is the accuracy the thermal average of the cell the MD runs needs.

    Parameters
    ----------
    x, temperature
        [n] composition and MD temperature (K) of every frame.
    energy_reference, energy_predicted
        [n] eV per cell: the engine's and the potential's energies (frames with a NaN are left out).

    Returns
    -------
    list of dict
        One row per (x, T > 0), sorted: ``x``, ``temperature`` (K), ``n`` (frames), ``std_dU`` (eV) and
        ``beta_sigma``; both None for fewer than 2 frames.
    """
    from aiida_capthermo.core.constants import KB_EV

    x = np.asarray(x, dtype=float).reshape(-1)
    temperature = np.asarray(temperature, dtype=float).reshape(-1)
    delta = (np.asarray(energy_reference, dtype=float).reshape(-1)
             - np.asarray(energy_predicted, dtype=float).reshape(-1))
    if not len(x) == len(temperature) == len(delta):
        raise ValueError(f'{len(x)} compositions, {len(temperature)} temperatures and {len(delta)} energies')
    keep = np.isfinite(delta) & (temperature > 0)
    groups: dict[tuple[float, float], list[float]] = {}
    for x_value, t_value, d in zip(x[keep], temperature[keep], delta[keep]):
        groups.setdefault((round(float(x_value), 6), round(float(t_value), 6)), []).append(float(d))
    rows = []
    for (x_value, t_value), values in sorted(groups.items()):
        std = float(np.std(values, ddof=1)) if len(values) > 1 else None
        rows.append({'x': x_value, 'temperature': t_value, 'n': len(values), 'std_dU': std,
                     'beta_sigma': None if std is None else std / (KB_EV * t_value)})
    return rows


def validation_rows(x: Sequence[float], temperature: Sequence[float], teacher_gap: Sequence[float],
                    model_gap: Sequence[float], n_atoms: Sequence[int], energy_reference: Sequence[float],
                    energy_predicted: Sequence[float], forces_reference: np.ndarray,
                    forces_predicted: np.ndarray, points: Sequence[str] | None = None,
                    keys: Sequence[str | None] | None = None, member_gaps: np.ndarray | None = None,
                    replicas: Sequence[str | None] | None = None) -> list[dict]:
    """Errors of both models per validation point (a structure at T, or an (x, T)) on the validation frames.

    Parameters
    ----------
    x, temperature
        [n_frames] composition and MD temperature (K) of every validation frame.
    teacher_gap, model_gap
        [n_frames] eV: the teacher's gap (NaN where the teacher failed) and the GNN's.
    n_atoms
        [n_frames] atoms per frame (the frames' atoms follow each other in the force arrays).
    energy_reference, energy_predicted
        [n_frames] eV: low-fidelity energy (NaN where not labelled) and the MLIP's.
    forces_reference, forces_predicted
        [sum(n_atoms), 3] eV/Å, NaN rows where not labelled.
    points, keys
        [n_frames] the point of every frame (:func:`point_key`) and the structure it comes from; None: points per
        (x, T) without a structure.
    member_gaps
        [n_models, n_frames] eV: every model's gap where ``model_gap`` is the mean of an ensemble; None: one model.
    replicas
        [n_frames] the MD replica of every frame (None for a frame of its own): the GNN's bias error is then the
        larger of the frames' and the replicas' (:func:`replica_bias_error`), and the sampling shift is estimated
        per replica where there are three or more (:func:`sampling_shift`); None: frames independent.

    Returns
    -------
    list of dict
        One row per point, sorted by x, T, point: ``point``, ``key`` (the structure, or None), ``x``,
        ``temperature`` (K), ``n_frames``;
        ``teacher_gap`` and ``teacher_gap_stderr`` (eV); ``gnn_bias`` = mean(teacher - GNN), ``gnn_bias_stderr`` (with
        ``replicas``, the larger of ``gnn_bias_stderr_frames`` and ``gnn_bias_stderr_replicas``, over
        ``n_bias_replicas``; ``gnn_bias_n``: the samples behind it), ``gnn_mae``, ``gnn_rmse`` (eV), ``n_gap``;
        ``force_mae``, ``force_rmse`` (eV/Å), ``energy_per_atom_mae``, ``energy_per_atom_bias`` (reference - MLIP,
        eV/atom), ``n_mlip`` (frames with energy and forces); ``sampling_shift``, ``sampling_shift_stderr`` (eV),
        ``sampling_beta_sigma``, ``sampling_correlation``, ``n_sampling`` (frames) and ``sampling_shift_n`` (the
        samples behind its standard error: replicas or frames) from :func:`sampling_shift` on the frames with a
        teacher gap and both energies; with ``member_gaps``, ``gnn_bias_members``: every model's mean(teacher -
        model) on the frames of ``gnn_bias`` (eV).
    """
    x = np.asarray(x, dtype=float)
    temperature = np.asarray(temperature, dtype=float)
    teacher_gap = np.asarray(teacher_gap, dtype=float)
    model_gap = np.asarray(model_gap, dtype=float)
    if member_gaps is not None:
        member_gaps = np.asarray(member_gaps, dtype=float)
        if member_gaps.ndim != 2 or member_gaps.shape[1] != len(model_gap):
            raise ValueError(f'member_gaps must be [n_models, {len(model_gap)}], got {member_gaps.shape}')
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    energy_reference = np.asarray(energy_reference, dtype=float)
    energy_predicted = np.asarray(energy_predicted, dtype=float)
    forces_reference = np.asarray(forces_reference, dtype=float).reshape(-1, 3)
    forces_predicted = np.asarray(forces_predicted, dtype=float).reshape(-1, 3)
    if forces_reference.shape[0] != n_atoms.sum() or forces_predicted.shape != forces_reference.shape:
        raise ValueError('the force arrays must hold [sum(n_atoms), 3] components')
    frame_of_atom = np.repeat(np.arange(len(n_atoms)), n_atoms)
    forces_ok = np.ones(len(n_atoms), dtype=bool)
    np.logical_and.at(forces_ok, frame_of_atom, np.all(np.isfinite(forces_reference), axis=1))
    if points is None:
        points = [point_key(float(x_value), float(t_value)) for x_value, t_value in zip(x, temperature)]
        keys = None
    keys = list(keys) if keys is not None else [None] * len(points)
    if len(points) != len(x) or len(keys) != len(x):
        raise ValueError(f'{len(points)} points and {len(keys)} keys for {len(x)} frames')
    if replicas is not None and len(replicas) != len(x):
        raise ValueError(f'{len(replicas)} replica labels for {len(x)} frames')
    groups: dict[tuple[float, float, str], list[int]] = {}
    for index, (x_value, t_value, point) in enumerate(zip(x, temperature, points)):
        groups.setdefault((round(float(x_value), 6), round(float(t_value), 6), str(point)), []).append(index)
    if len({point for _, _, point in groups}) != len(groups):
        raise ValueError('a validation point holds frames of different compositions or temperatures')
    rows = []
    for (x_value, t_value, point), indices in sorted(groups.items()):
        indices = np.array(indices)
        gaps = indices[np.isfinite(teacher_gap[indices]) & np.isfinite(model_gap[indices])]
        gnn = paired_difference(teacher_gap[gaps], model_gap[gaps])
        teacher_mean, teacher_stderr = mean_with_stderr(teacher_gap[gaps])
        mlip = indices[np.isfinite(energy_reference[indices]) & forces_ok[indices]]
        atoms = np.isin(frame_of_atom, mlip)
        forces = force_errors(forces_reference[atoms], forces_predicted[atoms])
        per_atom = paired_difference(energy_reference[mlip] / n_atoms[mlip], energy_predicted[mlip] / n_atoms[mlip])
        sampling = sampling_shift(teacher_gap[gaps], energy_reference[gaps], energy_predicted[gaps], t_value,
                                  None if replicas is None else [replicas[i] for i in gaps])
        rows.append({
            'point': point, 'key': keys[indices[0]], 'x': x_value, 'temperature': t_value,
            'n_frames': int(indices.size),
            'teacher_gap': teacher_mean, 'teacher_gap_stderr': teacher_stderr,
            'gnn_bias': gnn['bias'], 'gnn_bias_stderr': gnn['stderr'], 'gnn_mae': gnn['mae'], 'gnn_rmse': gnn['rmse'],
            'n_gap': gnn['n'], 'force_mae': forces['mae'], 'force_rmse': forces['rmse'],
            'energy_per_atom_mae': per_atom['mae'], 'energy_per_atom_bias': per_atom['bias'],
            'n_mlip': int(mlip.size), 'sampling_shift': sampling['shift'],
            'sampling_shift_stderr': sampling['shift_stderr'], 'sampling_beta_sigma': sampling['beta_sigma'],
            'sampling_correlation': sampling['correlation'],
            'n_sampling': sampling['n'], 'sampling_shift_n': sampling['stderr_n']})
        if replicas is not None:
            spread = replica_bias_error(teacher_gap[gaps] - model_gap[gaps], [replicas[i] for i in gaps])
            rows[-1].update({'gnn_bias_stderr': spread['stderr'], 'gnn_bias_stderr_frames': spread['stderr_frames'],
                             'gnn_bias_stderr_replicas': spread['stderr_replicas'],
                             'n_bias_replicas': spread['n_replicas'], 'gnn_bias_n': spread['n']})
        if member_gaps is not None:
            rows[-1]['gnn_bias_members'] = ([float(np.mean(teacher_gap[gaps] - member[gaps])) for member in member_gaps]
                                            if gaps.size else None)
    return rows
