"""The search's own operations on its experiment folder: the spec it writes, the resume state it
verifies and repairs (tuning.manifest), the Optuna journal it fixes up and copies. Only the search
imports this; analysis reads `tuning.results.Results`, which cannot write.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from tuning import manifest
from tuning.folder import JOURNAL_FILE, SPEC_FILE
from tuning.results import Results


@dataclass(frozen=True)
class Experiment(Results):
    """The experiment a search writes: its results, plus the writes only the search makes."""

    def has_ray_state(self) -> bool:
        """Whether Ray Tune has written its resume state here (tuner.pkl, at the search's start)."""
        import pyarrow.fs

        fs, path = self._fs()
        return fs.get_file_info(f"{path}/{manifest.TUNER_FILE}").type == pyarrow.fs.FileType.File

    def verify_state(self) -> list[str]:
        """Check Ray's resume state against the signed manifest the search wrote (tuning.manifest),
        after putting back the last whole save of any file a killed driver left cut short; raises
        UntrustedStateError naming the file that fails. Nothing here is unpickled. Returns the
        files put back."""
        repaired = manifest.repair(*self._fs())
        manifest.verify(*self._fs())
        return repaired

    def new_spec(self, spec: dict, labels: Sequence[str]) -> dict:
        """`spec` plus what this layout decides at creation: the study names (label -> study; never
        derived from the folder's name again) and, for a URI storage, the journal's place."""
        extra = {"studies": {label: self.study_name(label) for label in labels}}
        if self.is_uri:
            extra["journal"] = str(self.local / JOURNAL_FILE)
        return {**spec, **extra}

    def write_spec(self, spec: dict) -> None:
        fs, path = self._fs()
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{SPEC_FILE}") as f:
            f.write(json.dumps(spec, indent=2, default=str).encode())
        self.__dict__.pop("spec", None)  # read anew next time

    def fail_orphans(self) -> int:
        """Mark FAIL, with the reason, every Optuna trial still RUNNING once the search has ended:
        a trial the driver asked for and Ray never finished (the driver was killed after starting it
        and before Ray's next snapshot) that no trial of the resumed search took over (its budget
        was spent first; PruningAwareOptunaSearch.adopt_orphans). Returns how many."""
        from optuna.trial import TrialState

        storage, n = self.journal_storage(), 0
        for name in self.study_names():
            study = storage.get_study_id_from_name(name)
            for trial in storage.get_all_trials(study, deepcopy=False, states=(TrialState.RUNNING,)):
                storage.set_trial_system_attr(trial._trial_id, "fail_reason", "orphaned: its driver was killed "
                                              "before Ray recorded the trial; not a result")
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                n += 1
        return n

    def sync_journal(self) -> None:
        """URI storage: copy the driver's journal into the experiment, so it travels with it."""
        if self.is_uri and (self.local / JOURNAL_FILE).exists():
            import pyarrow.fs

            fs, path = self._fs()
            pyarrow.fs.copy_files(str(self.local / JOURNAL_FILE), f"{path}/{JOURNAL_FILE}",
                                  source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
