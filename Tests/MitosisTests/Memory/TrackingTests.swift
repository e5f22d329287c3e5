import Foundation
import Testing
@testable import Mitosis

@Suite struct UffdWriteProtectTrackingTests {
    @Test(.enabled(if: TrackingStrategy.userfaultfdWriteProtect.isSupported, "\(TrackingStrategy.userfaultfdWriteProtect.unsupportedReason)"))
    func chainOfCheckpointsIsByteExact() async throws {
        try await ChainScenario.run(.userfaultfdWriteProtect)
    }
}

@Suite struct HashTrackingTests {
    @Test func chainOfCheckpointsIsByteExact() async throws {
        try await ChainScenario.run(.hash)
    }
}

@Suite struct SoftDirtyTrackingTests {
    @Test(.enabled(if: TrackingStrategy.softDirty.isSupported, "\(TrackingStrategy.softDirty.unsupportedReason)"))
    func chainOfCheckpointsIsByteExact() async throws {
        try await ChainScenario.run(.softDirty)
    }
}
