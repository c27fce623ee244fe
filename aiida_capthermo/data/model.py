"""``ModelData``: a trained model (GNN or MACE potential) as a node with its files in the repository."""

from __future__ import annotations

import hashlib
import pathlib

from aiida import orm

__all__ = ['ModelData']

KINDS = ('gnn', 'mace')


class ModelData(orm.Data):
    """A trained model: its files in the repository, what it is in the attributes.

    Attributes: ``kind`` (``gnn`` or ``mace``), ``files`` (names in the repository), ``main_file``
    (the file a loader opens: a ``state_dict`` for a GNN, a MACE ``.model`` for a potential),
    ``sha256`` (of the main file, to check a copy on a cluster is the same model), plus whatever
    the trainer records (``architecture``, ``hyperparameters``, ``normalisation``, ``r_max``,
    ``dtype``, ``target``, ``foundation`` ...).
    """

    @classmethod
    def from_files(cls, kind: str, files: dict[str, str | pathlib.Path], main_file: str, **attributes) -> ModelData:
        """Create an unstored model node from files on disk (``files`` maps repository names to paths)."""
        if kind not in KINDS:
            raise ValueError(f'unknown model kind {kind!r}; expected one of {KINDS}')
        if main_file not in files:
            raise ValueError(f'main file {main_file!r} is not among the files {sorted(files)}')
        node = cls()
        for name, path in files.items():
            path = pathlib.Path(path)
            if not path.is_file():
                raise FileNotFoundError(f'model file {path} does not exist')
            node.base.repository.put_object_from_file(str(path), name)
        node.base.attributes.set('kind', kind)
        node.base.attributes.set('files', sorted(files))
        node.base.attributes.set('main_file', main_file)
        node.base.attributes.set('sha256', sha256_file(files[main_file]))
        for key, value in attributes.items():
            node.base.attributes.set(key, value)
        return node

    @property
    def kind(self) -> str:
        return self.base.attributes.get('kind')

    @property
    def main_file(self) -> str:
        return self.base.attributes.get('main_file')

    @property
    def sha256(self) -> str:
        return self.base.attributes.get('sha256')

    def export_files(self, dirpath: str | pathlib.Path) -> dict[str, pathlib.Path]:
        """Copy all model files into ``dirpath``; return name -> path."""
        dirpath = pathlib.Path(dirpath)
        dirpath.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in self.base.attributes.get('files'):
            target = dirpath / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.base.repository.open(name, 'rb') as source:
                target.write_bytes(source.read())
            paths[name] = target
        return paths

    def integrity_error(self) -> str | None:
        """Why the model's files cannot be the model they claim to be, or None. Every listed file must be in the
        repository; the main file must have the recorded SHA-256; torch files (``.model``, ``.pt``: zip archives)
        must pass the archive's CRC check, and JSON files must parse. A truncated or corrupted model is refused here,
        in one line naming the node, before a job runs, not by a loader's UnpicklingError later. Standard library
        only: the AiiDA side checks without torch."""
        import io
        import json
        import zipfile

        where = f'model {self.pk or self.uuid} ({self.kind})'
        for name in self.base.attributes.get('files'):
            try:
                content = self.get_bytes(name)
            except (FileNotFoundError, OSError):
                return f'{where}: its file {name!r} is missing from the repository'
            if name == self.main_file and hashlib.sha256(content).hexdigest() != self.sha256:
                return f'{where}: its file {name!r} does not match the SHA-256 recorded when it was stored'
            if name.endswith(('.model', '.pt')):
                try:
                    with zipfile.ZipFile(io.BytesIO(content)) as archive:
                        damaged = archive.testzip()
                except (zipfile.BadZipFile, EOFError, ValueError) as exception:
                    return (f'{where}: its file {name!r} ({len(content)} bytes) is not a readable torch archive '
                            f'({exception}): truncated or corrupted; store the model again')
                if damaged is not None:
                    return f'{where}: its file {name!r} is corrupted (member {damaged!r} fails its CRC check)'
            elif name.endswith('.json'):
                try:
                    json.loads(content)
                except ValueError as exception:
                    return f'{where}: its file {name!r} is not valid JSON ({exception}): truncated or corrupted'
        return None

    @property
    def domain(self) -> dict | None:
        """What the model was trained on (:func:`aiida_capthermo.core.domain.training_domain`: elements, closest
        pair, volume per atom, target range); None for a model stored before domains were recorded."""
        return self.base.attributes.get('domain', None)

    def outside_domain(self, structures) -> list[list[str]]:
        """For each structure (``ase.Atoms`` or ``StructureData``) what lies outside the model's training domain,
        one sentence each (:func:`aiida_capthermo.core.domain.domain_violations`); empty lists without a domain."""
        from aiida_capthermo.core.domain import domain_violations

        atoms_list = [s.get_ase() if hasattr(s, 'get_ase') else s for s in structures]
        return [domain_violations(self.domain, atoms) if self.domain else [] for atoms in atoms_list]

    def predict(self, structures, batch_size: int = 8, out_of_domain: str = 'refuse') -> list[dict]:
        """Predict with this model in this process, on the CPU (no CalcJob): for each structure (``ase.Atoms`` or
        ``StructureData``) a dict with ``n_atoms`` and, for a GNN, its target (``gap`` ... in ``units``); for a
        MACE potential ``energy`` (eV), ``energy_per_atom`` (eV/atom), ``forces`` ([n_atoms, 3] eV/Å),
        ``max_force`` (eV/Å) and ``stress`` (eV/Å^3, Voigt, ASE's sign); a non-finite energy or force is a
        ``ValueError``, never a number. A structure outside the model's training domain (:meth:`outside_domain`:
        unknown elements, atoms closer than it has seen, a volume far outside) is a ``ValueError`` with
        ``out_of_domain='refuse'``; with ``'flag'`` it is predicted and its dict lists why under
        ``outside_domain``. Meant for a handful of structures: thousands go through the CalcJobs."""

        if out_of_domain not in ('refuse', 'flag'):
            raise ValueError(f"out_of_domain must be 'refuse' or 'flag', got {out_of_domain!r}")
        damaged = self.integrity_error()
        if damaged:
            raise ValueError(damaged)
        atoms_list = [s.get_ase() if hasattr(s, 'get_ase') else s for s in structures]
        if not atoms_list:
            return []
        outside = self.outside_domain(atoms_list)
        if out_of_domain == 'refuse' and any(outside):
            index = next(i for i, reasons in enumerate(outside) if reasons)
            raise ValueError(f'structure {index} lies outside the training domain of model {self.pk}: '
                             f'{"; ".join(outside[index])} (flag instead of refusing: out_of_domain="flag")')
        flags = [{'outside_domain': reasons} if out_of_domain == 'flag' else {} for reasons in outside]
        return [{**result, **flag} for result, flag in zip(self._predict(atoms_list, batch_size), flags)]

    def _predict(self, atoms_list: list, batch_size: int) -> list[dict]:
        """The predictions of :meth:`predict`, without the domain check."""
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            paths = self.export_files(folder)
            if self.kind == 'gnn':
                from aiida_capthermo.core.dataset import LabelledSet
                from aiida_capthermo.ml.gnn.predict import predict
                from aiida_capthermo.ml.gnn.training import load_model

                loaded = load_model(folder)
                values = predict(loaded, LabelledSet.from_atoms_list(atoms_list), batch_size=batch_size)
                return [{'n_atoms': len(atoms), loaded.target: float(value), 'units': loaded.metadata['units']}
                        for atoms, value in zip(atoms_list, values)]
            if self.kind == 'mace':
                import numpy as np

                from aiida_capthermo.ml.mace import load_mace_model, predict

                model = load_mace_model(str(paths[self.main_file]), device='cpu')
                result = predict(model, atoms_list, batch_size=batch_size, device='cpu')
            else:
                raise ValueError(f'cannot predict with a model of kind {self.kind!r} (gnn or mace)')
        offsets = np.cumsum([0] + [len(atoms) for atoms in atoms_list])
        broken = [i for i in range(len(atoms_list)) if not (np.isfinite(result['energy'][i]) and np.all(np.isfinite(
            result['forces'][offsets[i]:offsets[i + 1]])))]
        if broken:
            raise ValueError(f'the model gives a non-finite energy or force for structures {broken} (atoms on top of '
                             'each other, or far outside what it was trained on): no prediction')
        return [{'n_atoms': len(atoms), 'energy': float(result['energy'][i]),
                 'energy_per_atom': float(result['energy'][i]) / len(atoms),
                 'forces': result['forces'][offsets[i]:offsets[i + 1]].tolist(),
                 'max_force': float(np.linalg.norm(result['forces'][offsets[i]:offsets[i + 1]], axis=1).max()),
                 'stress': result['stress'][i].tolist(), 'units': {'energy': 'eV', 'forces': 'eV/Å',
                                                                  'stress': 'eV/Å^3'}}
                for i, atoms in enumerate(atoms_list)]

    def get_bytes(self, name: str | None = None) -> bytes:
        with self.base.repository.open(name or self.main_file, 'rb') as handle:
            return handle.read()


def sha256_file(path: str | pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
