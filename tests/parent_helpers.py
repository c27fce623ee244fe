"""A parent structure the tests write as a file, as a user would give it: cubic CsPbI3 (CsPb(Br,I)3 family)."""

CSPBI3_CIF = """data_CsPbI3
_cell_length_a 6.29
_cell_length_b 6.29
_cell_length_c 6.29
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Cs1 Cs 0.0 0.0 0.0
Pb1 Pb 0.5 0.5 0.5
I1 I 0.5 0.5 0.0
I2 I 0.5 0.0 0.5
I3 I 0.0 0.5 0.5
"""
