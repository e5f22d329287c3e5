import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisModel
@testable import MitosisRestore

/// Every error the library throws is a `MitosisFailure`: one line to show (`summary`), a stable
/// `code` to match on, one spelling per failure.
@Suite("Error family")
struct ErrorFamilyTests {
    @Test("each error type is a MitosisFailure with a domain and a stable code per case")
    func codes() {
        let failures: [(any MitosisFailure, String)] = [
            (MitosisError.noSuchProcess(7), "target.noSuchProcess"),
            (MitosisError.targetExited(7), "target.targetExited"),
            (MitosisError.pidReused(7), "target.pidReused"),
            (MitosisError.notDumpable(7), "target.notDumpable"),
            (CheckpointError.noPreviousCheckpoint, "checkpoint.noPreviousCheckpoint"),
            (CheckpointError.sessionStopped, "checkpoint.sessionStopped"),
            (CheckpointError.parentOfOtherProcess(parent: 1, target: 2), "checkpoint.parentOfOtherProcess"),
            (ImageError.notAnImage("/x"), "image.notAnImage"),
            (ImageError.checksumMismatch("/x", file: "pages.data", entry: 3), "image.checksumMismatch"),
            (RestoreError.pidOutOfRange(7), "restore.pidOutOfRange"),
            (RestoreError.failed(step: "mapping", detail: "ENOMEM"), "restore.failed"),
            (ProbeFailure("no PAGEMAP_SCAN"), "probe.failed"),
        ]
        for (failure, code) in failures {
            #expect(failure.code == code)
            #expect(failure.summary == failure.description)
            #expect(!failure.summary.contains("\n"), "one line: \(failure.summary)")
        }
        #expect(MitosisError.domain == "target" && CheckpointError.domain == "checkpoint" && ImageError.domain == "image"
                && RestoreError.domain == "restore" && ProbeFailure.domain == "probe")
    }

    @Test("a target that exits mid-operation is spelled once, whichever layer noticed")
    func targetExitedOnce() {
        #expect(MitosisError.targetExited(42).summary
            == "process 42 exited while mitosis was working on it (an image being written is left marked incomplete)")
        #expect(CheckpointSession.translate(MitosisError.noSuchProcess(42), pid: 42) as? MitosisError == .targetExited(42))
        #expect(CheckpointSession.translate(MitosisError.zombie(42), pid: 42) as? MitosisError == .targetExited(42))
        #expect(CheckpointSession.translate(MitosisError.noSuchProcess(43), pid: 42) as? MitosisError == .noSuchProcess(43))
        #expect(MitosisError.pidReused(42).goneProcess == nil && MitosisError.targetExited(42).goneProcess == 42)
    }
}
