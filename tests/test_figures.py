"""The figures a researcher shows: what each axis says, which error bars are drawn and how long they are, which points
a line joins, and the resolution of the files. Checked on the matplotlib figures themselves."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from aiida_capthermo.ml.gnn.metrics import parity_caption, regression_metrics
from aiida_capthermo.workflows.report import DPI, mace_parity_figure, png_bytes, table_figure

#: Two Table I rows (x = 0 and 1/2) at 0, 300 and 600 K: Eg(0) of the relaxed cell without an error, MD averages
#: with a total error and its statistical part.
ROWS = [
    {'x': 0.0, 'key': 'x_0p000', 'eg0': 0.8, 'temperatures': [0.0, 300.0, 600.0], 'gap': [0.8, 0.6, 0.4],
     'stderr': [0.0, 0.05, 0.09], 'stderr_statistical': [0.0, 0.01, 0.02], 'relative_change': [0.0, -0.25, -0.5]},
    {'x': 0.5, 'key': 'x_0p500', 'eg0': 0.5, 'temperatures': [0.0, 300.0, 600.0], 'gap': [0.5, 0.45, 0.3],
     'stderr': [0.0, 0.04, 0.07], 'stderr_statistical': [0.0, 0.012, 0.03], 'relative_change': [0.0, -0.1, -0.4]},
]


def _half_lengths(container) -> np.ndarray:
    """Half-lengths of the vertical error bars of an ErrorbarContainer."""
    segments = container.lines[2][0].get_segments()
    return np.array([(segment[1][1] - segment[0][1]) / 2 for segment in segments])


def test_eg_vs_t_marks_the_static_gap_and_draws_both_error_bars():
    """Eg(0) is an open square no line joins to the MD averages; each MD point has its total error (capped) and
    its statistical part, at their lengths, the compositions 1 % of the T range apart; x is named by its species."""
    figure = table_figure(ROWS, 'eg_vs_t', guest='Br')
    axis = figure.axes[0]
    assert axis.get_xlabel() == 'T (K)' and axis.get_ylabel() == 'Eg (eV)'
    joined = [line for line in axis.get_lines() if line.get_linestyle() not in ('None', '') and len(line.get_xdata())]
    assert joined and all(0.0 not in line.get_xdata() for line in joined)  # no line from the static gap
    assert np.allclose(sorted(tuple(line.get_xdata()) for line in joined), [(297.0, 597.0), (303.0, 603.0)])
    bars = [_half_lengths(container) for container in axis.containers]
    for row in ROWS:
        assert any(np.allclose(b, row['stderr'][1:]) for b in bars)  # total
        assert any(np.allclose(b, row['stderr_statistical'][1:]) for b in bars)  # statistical part
    statics = [line for line in axis.get_lines() if line.get_marker() == 's' and list(line.get_xdata()) == [0.0]]
    assert sorted(line.get_ydata()[0] for line in statics) == [0.5, 0.8]
    assert all(line.get_markerfacecolor() in ('white', (1.0, 1.0, 1.0, 1.0)) for line in statics)
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert sorted(legend) == [r'$x_{\mathrm{Br}}$ = 0.000', r'$x_{\mathrm{Br}}$ = 0.500',
                              'Eg(0): relaxed cell (static)']
    assert 'statistical' in axis.get_title()


@pytest.mark.parametrize('name, ylabel', [('eg_vs_x', 'Eg (eV)'), ('relative_change', 'ΔEg / Eg(0 K) (%)')])
def test_composition_figures_name_the_species_and_scale_the_errors(name, ylabel):
    """Eg(x) per T and ΔEg/Eg(0) per T > 0 against x_Br, error bars in the plotted unit (% of Eg(0) for the
    relative change)."""
    figure = table_figure(ROWS, name, guest='Br')
    axis = figure.axes[0]
    assert axis.get_xlabel() == r'$x_{\mathrm{Br}}$ (guest fraction)' and axis.get_ylabel() == ylabel
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    if name == 'eg_vs_x':
        assert legend == ['0 K (static, relaxed cell)', '300 K', '600 K']
        assert np.allclose(_half_lengths(axis.containers[2]), [0.09, 0.07])
    else:
        assert legend == ['300 K', '600 K']
        assert np.allclose(_half_lengths(axis.containers[1]), [100 * 0.09 / 0.8, 100 * 0.07 / 0.5])
    assert table_figure(ROWS, name).axes[0].get_xlabel() == '$x$ (guest fraction)'  # no species known


def test_figures_are_200_dpi_png_and_reproducible_pdf():
    """The PNG has the figure's size at 200 dpi; the PDF carries no creation date, so the same rows give the same
    bytes (a report from an imported archive is identical to the original's)."""
    png = png_bytes(table_figure(ROWS, 'eg_vs_t'))
    width, height = struct.unpack('>II', png[16:24])  # the IHDR chunk
    assert DPI == 200 and (width, height) == (round(5.2 * DPI), round(3.9 * DPI))
    first, second = (png_bytes(table_figure(ROWS, 'eg_vs_t'), file_format='pdf') for _ in range(2))
    assert first[:5] == b'%PDF-' and first == second


def test_figures_do_not_depend_on_the_rc_state_of_the_process():
    """Every figure is drawn in matplotlib's default style (``report.styled``), so that a library which changed the
    process's rcParams (pymatgen's plotter sets font.size 8) changes no byte: a daemon worker, a test and
    `capthermo report` on an imported archive draw the same file."""
    import matplotlib

    clean = png_bytes(table_figure(ROWS, 'eg_vs_x'), file_format='pdf')
    with matplotlib.rc_context({'font.size': 15, 'font.family': 'serif'}):
        assert png_bytes(table_figure(ROWS, 'eg_vs_x'), file_format='pdf') == clean
        assert png_bytes(table_figure.__wrapped__(ROWS, 'eg_vs_x'), file_format='pdf') != clean  # what it prevents


def _parity(n: int, stress: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_atoms = np.full(n, 5)
    energy = rng.normal(-20.0, 0.5, n)
    forces = rng.normal(0.0, 1.0, (5 * n, 3))
    stress_ref = rng.normal(0.0, 0.01, (n, 6)) if stress else np.full((n, 6), np.nan)
    return {'n_atoms': n_atoms, 'energy_ref': energy, 'energy_pred': energy + 0.005 * rng.normal(size=n),
            'forces_ref': forces, 'forces_pred': forces + 0.05, 'stress_ref': stress_ref,
            'stress_pred': stress_ref + 0.001}


def test_mace_parity_has_units_sizes_and_a_stress_panel():
    """Energy (meV/atom), forces (eV/Å) and, where the reference has stresses, stress (GPa), each panel titled
    with its MAE in its unit, R² and the number of values."""
    figure = mace_parity_figure(_parity(6, stress=True), 'MACE on 6 held-out structures')
    titles = [axis.get_title() for axis in figure.axes]
    assert [axis.get_xlabel() for axis in figure.axes] == [
        'reference energy − mean (meV/atom)', 'reference force component (eV/Å)', 'reference stress component (GPa)']
    assert titles[1].startswith('MAE 0.05 eV/Å, R² ') and titles[1].endswith('(n = 90 force components)')
    assert titles[2].startswith('MAE 0.16 GPa') and '(n = 36 stress components)' in titles[2]  # 0.001 eV/Å^3
    assert '(n = 6 structures)' in titles[0]
    assert len(mace_parity_figure(_parity(6, stress=False)).axes) == 2  # no stress labels: no panel


def test_parity_caption_gives_r2_only_where_defined():
    """One structure (or a constant reference) has no R²: the caption leaves it out instead of printing n/a."""
    one = regression_metrics(np.array([1.2]), np.array([1.25]))
    assert parity_caption(one, 'eV', 'structures') == 'MAE 0.05 eV (n = 1 structures)'
    many = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.3]))
    assert parity_caption(many, 'eV', 'structures') == f'MAE 0.1 eV, R² {1 - 0.09 / 2:.3f} (n = 3 structures)'


def test_band_path_axis_is_the_wave_vector_distance_with_labelled_breaks(aiida_profile):
    """Γ-X then M-R of a cubic cell with a = 2π Å (reciprocal vectors of 1/Å): the axis is the distance along the
    path, nothing is added across the X|M break, the break is one tick, and the two sides are separate lines."""
    from aiida import orm

    from aiida_capthermo.workflows.screen import band_path_axis

    bands = orm.BandsData()
    bands.set_cell(np.eye(3) * 2 * np.pi)
    bands.set_kpoints(np.array([[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0.25],
                                [0.5, 0.5, 0.5]]))
    bands.labels = [(0, 'G'), (2, 'X'), (3, 'M'), (5, 'R')]
    distance, ticks, segments = band_path_axis(bands)
    np.testing.assert_allclose(distance, [0.0, 0.25, 0.5, 0.5, 0.75, 1.0])
    assert [(round(d, 12), name) for d, name in ticks] == [(0.0, 'G'), (0.5, 'X|M'), (1.0, 'R')]
    assert segments == [slice(0, 3), slice(3, 6)]


def test_total_dos_integrates_to_3n_and_is_the_smeared_mesh(aiida_profile):
    """The phonon DOS of fcc Cu (EMT, conventional cell, 4 atoms) on a 4x4x4 mesh: it integrates to 3N = 12 states
    and equals a brute-force sum of Gaussians over the mesh frequencies with their q-point weights."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from aiida_capthermo.ml.mlip import calculator_forces, phonopy_from_forces, total_dos

    phonon = phonopy_from_forces(bulk('Cu', 'fcc', a=3.61, cubic=True), calculator_forces(EMT()), (2, 2, 2), 0.01)
    sigma = 0.2
    frequency, dos = total_dos(phonon, (4, 4, 4), sigma)
    assert np.trapezoid(dos, frequency) == pytest.approx(12.0, rel=2e-3)
    mesh = phonon.get_mesh_dict()
    weights = mesh['weights'] / mesh['weights'].sum()
    gaussians = np.exp(-((frequency[:, None, None] - mesh['frequencies'][None]) ** 2) / (2 * sigma ** 2))
    brute = np.einsum('fqm,q->f', gaussians, weights) / (sigma * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(dos, brute, atol=1e-8 * brute.max())


def _bands(frequencies: np.ndarray, dos_peak: float):
    """Bands of a cubic cell along G-X|M-R with a DOS (one Gaussian of 12 states at ``dos_peak`` THz)."""
    from aiida import orm

    bands = orm.BandsData()
    bands.set_cell(np.eye(3) * 5.0)
    bands.set_kpoints(np.array([[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0.25],
                                [0.5, 0.5, 0.5]]))
    bands.labels = [(0, 'G'), (2, 'X'), (3, 'M'), (5, 'R')]
    bands.set_bands(frequencies, units='THz')
    grid = np.linspace(-2.0, 8.0, 201)
    bands.set_array('dos_frequency', grid)
    bands.set_array('dos', 12 * np.exp(-((grid - dos_peak) ** 2) / 2) / np.sqrt(2 * np.pi))
    bands.base.attributes.set('formula', 'Ag24Br4I4S8')
    bands.base.attributes.set('x', 0.5)
    return bands


def test_phonon_figure_overlays_harmonic_and_renormalised_bands_beside_their_dos(aiida_profile):
    """One band panel per temperature with the 0 K harmonic bands (grey) under the renormalised ones, a DOS panel
    with both DOS, the unresolved modes marked at their harmonic frequencies, a title that names formula, x and
    configuration; without temperatures, the harmonic bands alone (blue) beside their DOS."""
    from aiida_capthermo.workflows.screen import phonon_figure

    harmonic = np.tile(np.array([-0.5, 1.0, 3.0]), (6, 1))  # one imaginary branch at 0 K
    result = {'unresolved': [1], 'harmonic': [0.0, -0.5, 2.0], 'stabilised': False,
              'commensurate_frequencies': [[0.2, 1.1, 3.1]]}
    figure = phonon_figure('x_0p500_c003', _bands(harmonic, 2.0),
                           {'T300': (_bands(np.tile(np.array([0.4, 1.1, 3.2]), (6, 1)), 2.5), result)},
                           np.array([[0.0, 0.0, 0.0]]))
    bands_axis, dos_axis = figure.axes
    assert figure._suptitle.get_text() == 'phonons of Ag24Br4I4S8, x = 0.500, configuration c003'
    assert bands_axis.get_title() == '300 K renormalised over 0 K harmonic: not stabilised'
    assert [tick.get_text() for tick in bands_axis.get_xticklabels()] == ['G', 'X|M', 'R']
    grey = [line for line in bands_axis.lines if line.get_color() == '0.6']
    assert len(grey) == 6 and np.allclose(grey[0].get_ydata(), -0.5)  # 3 branches x 2 segments, harmonic
    assert [text.get_text() for text in bands_axis.get_legend().get_texts()] == [
        '0 K harmonic', 'renormalised (interpolated)', 'measured by the MD']
    assert dos_axis.get_xlabel() == 'DOS (1/THz)'
    labels = [text.get_text() for text in dos_axis.get_legend().get_texts()]
    assert labels == ['0 K', '300 K', 'unresolved at 300 K']
    marks = [line for line in dos_axis.lines if line.get_marker() == 'x']
    assert len(marks) == 1 and list(marks[0].get_ydata()) == [-0.5]  # mode 1 at its harmonic frequency
    peak = next(line for line in dos_axis.lines if line.get_label() == '300 K')
    assert peak.get_ydata()[np.nanargmax(peak.get_xdata())] == pytest.approx(2.5)
    alone = phonon_figure('x_0p000_c000', _bands(harmonic, 2.0), {}, np.zeros((0, 3)))
    assert len(alone.axes) == 2 and alone.axes[0].get_title() == '0 K (harmonic)'
    assert {line.get_color() for line in alone.axes[0].lines if line.get_marker() != 'x'} >= {'tab:blue'}


def test_the_committed_demo_figures_are_200_dpi_with_a_pdf_beside_each():
    """docs/figures/demo holds the recorded run's figures as the study stored them: every PNG at 200 dpi (its pHYs
    chunk) with its vector PDF, and every figure of the run's Table I and stages present."""
    import pathlib

    folder = pathlib.Path(__file__).parent.parent / 'docs/figures/demo'
    pngs = sorted(folder.glob('*.png'))
    assert {'eg_vs_t', 'eg_vs_x', 'relative_change', 'mace_parity', 'mace_learning_curve', 'gnn_parity',
            'validation', 'phonons_x_0p500'} <= {png.stem for png in pngs}
    for png in pngs:
        content = png.read_bytes()
        chunk = content.index(b'pHYs')
        x, y, unit = struct.unpack('>IIB', content[chunk + 4:chunk + 13])
        assert unit == 1 and x == y == round(DPI / 0.0254), png.name  # pixels per metre
        assert png.with_suffix('.pdf').read_bytes()[:5] == b'%PDF-', png.name
