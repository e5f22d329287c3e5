// The public API of Mitosis in one import: `import Mitosis`.
// Each layer is its own module (see Docs/architecture.md); this file only re-exports them.
@_exported import MitosisModel
@_exported import MitosisTrace
@_exported import MitosisInspect
@_exported import MitosisImage
@_exported import MitosisCheckpoint
@_exported import MitosisRestore
@_exported import MitosisReplication
