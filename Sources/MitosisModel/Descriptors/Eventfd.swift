/// `eventfd-count:` (hex in fdinfo), `eventfd-id:` and, on newer kernels, `eventfd-semaphore:`.
public struct EventfdState: Equatable, Hashable, Sendable, Codable {
    public var counter: UInt64
    public var id: Int?
    public var semaphore: Bool?

    package init(counter: UInt64, id: Int? = nil, semaphore: Bool? = nil) {
        self.counter = counter
        self.id = id
        self.semaphore = semaphore
    }
}
