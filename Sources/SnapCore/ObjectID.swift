import CCrypto

/// libcrypto, set up once per process: without its exit handler (see the C shim: threads that
/// still hash or end while the process exits would otherwise lock freed memory), and with SHA-256
/// fetched once instead of looked up, under a global lock, for every digest.
public enum CryptoLibrary {
    /// Sets OpenSSL up if nothing in the process has used it yet. Hashing calls it itself; an
    /// executable calls it first thing, because libpq may reach OpenSSL before anything is hashed.
    public static func prepare() { _ = sha256 }

    struct Algorithm: @unchecked Sendable {  // an EVP_MD is immutable once fetched
        let pointer: OpaquePointer
    }

    static let sha256: Algorithm = {
        precondition(snap_crypto_init_without_exit_handler() == 1, "OpenSSL cannot be initialized")
        guard let fetched = EVP_MD_fetch(nil, "SHA256", nil) else { fatalError("OpenSSL has no SHA-256") }
        return Algorithm(pointer: fetched)
    }()
}

/// The name of a stored object: the SHA-256 of the chunk's uncompressed bytes.
///
/// Kept as four words so that sets of millions of names stay compact and hash quickly.
public struct ObjectID: Hashable, Comparable, Sendable, CustomStringConvertible {
    var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

    /// The SHA-256 of `bytes`, computed through OpenSSL's EVP interface.
    public init(hashing bytes: UnsafeRawBufferPointer) {
        var digest = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &digest) { out in
            var length: UInt32 = 0
            let ok = EVP_Digest(
                bytes.baseAddress, bytes.count,
                out.baseAddress!.assumingMemoryBound(to: UInt8.self), &length,
                CryptoLibrary.sha256.pointer, nil)
            precondition(ok == 1 && length == 32, "OpenSSL EVP_Digest(SHA-256) failed")
        }
        // The digest is a byte string; words are read big-endian so ordering matches the hex.
        w0 = UInt64(bigEndian: digest.0)
        w1 = UInt64(bigEndian: digest.1)
        w2 = UInt64(bigEndian: digest.2)
        w3 = UInt64(bigEndian: digest.3)
    }

    public init(hashing bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { ObjectID(hashing: $0) }
    }

    /// Parses 64 lowercase or uppercase hex digits.
    public init?(hex: some StringProtocol) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 64 else { return nil }
        var words: [UInt64] = [0, 0, 0, 0]
        for (index, char) in utf8.enumerated() {
            guard let nibble = hexValue(char) else { return nil }
            words[index / 16] = words[index / 16] << 4 | UInt64(nibble)
        }
        (w0, w1, w2, w3) = (words[0], words[1], words[2], words[3])
    }

    /// The 32 digest bytes.
    public var bytes: [UInt8] {
        var result = [UInt8]()
        result.reserveCapacity(32)
        for word in [w0, w1, w2, w3] {
            for shift in stride(from: 56, through: 0, by: -8) {
                result.append(UInt8(truncatingIfNeeded: word >> UInt64(shift)))
            }
        }
        return result
    }

    /// 64 lowercase hex digits, the object's file name.
    public var hex: String { hexString(bytes) }

    public var description: String { hex }

    public static func < (a: ObjectID, b: ObjectID) -> Bool {
        (a.w0, a.w1, a.w2, a.w3) < (b.w0, b.w1, b.w2, b.w3)
    }
}

@inline(__always)
func hexValue(_ char: UInt8) -> UInt8? {
    switch char {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return char - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return char - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return char - UInt8(ascii: "A") + 10
    default: return nil
    }
}

extension ObjectID: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let id = ObjectID(hex: text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "not a SHA-256 hex name: \(text)"))
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(hex)
    }
}

/// SHA-256 over data that arrives in pieces (an archive being imported, say).
public final class SHA256Hasher {
    private let context: OpaquePointer

    public init() {
        guard let context = EVP_MD_CTX_new(), EVP_DigestInit_ex(context, CryptoLibrary.sha256.pointer, nil) == 1 else {
            fatalError("OpenSSL cannot start a SHA-256 digest")
        }
        self.context = context
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        precondition(EVP_DigestUpdate(context, bytes.baseAddress, bytes.count) == 1, "OpenSSL SHA-256 update failed")
    }

    /// The digest of everything so far, as 64 hex digits.
    public func finalize() -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        precondition(EVP_DigestFinal_ex(context, &digest, &length) == 1, "OpenSSL SHA-256 final failed")
        return hexString(digest)
    }
}
