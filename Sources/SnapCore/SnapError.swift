#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An error from the snap core: what went wrong, in one line a user can act on.
///
/// Follows the `code, message, cause` pattern: `code` is for programs, `description` is what a
/// person sees, and `cause` keeps the underlying error (an errno, a decoding failure) for context.
public struct SnapError: Error, CustomStringConvertible, Sendable {
    /// A category of failure, stable for programs that branch on it.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// A path that is not a snap repository, or a repository that cannot be read.
        public static let notARepository = Code(name: "not-a-repository")
        /// `init` over an existing repository.
        public static let repositoryExists = Code(name: "repository-exists")
        /// A repository written by a newer snap.
        public static let unsupportedFormat = Code(name: "unsupported-format")
        /// The operating system refused a file operation.
        public static let io = Code(name: "io")
        /// Stored data that does not decode or does not match its name.
        public static let corrupt = Code(name: "corrupt")
        /// A snapshot id, prefix, or object that does not exist.
        public static let notFound = Code(name: "not-found")
        /// A snapshot id prefix that matches more than one snapshot.
        public static let ambiguous = Code(name: "ambiguous")
        /// Bad input from the user: a missing folder, a non-empty target, a bad flag value.
        public static let invalidInput = Code(name: "invalid-input")
        /// A path in a snapshot that would lead outside the restore target.
        public static let unsafePath = Code(name: "unsafe-path")
        /// Another process holds the repository lock.
        public static let locked = Code(name: "locked")
    }

    public var code: Code
    public var message: String
    public var cause: (any Error)?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        guard let cause else { return message }
        return "\(message): \(cause)"
    }
}

/// An operating-system error number with its text, as `strerror` gives it.
public struct Errno: Error, CustomStringConvertible, Sendable, Equatable {
    public var rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }
    public var description: String { String(cString: strerror(rawValue)) }
}
