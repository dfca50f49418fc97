/// Just enough SQL lexing to work with the statements pg_dump writes into a dump's table of
/// contents: split them, find the roles their grants name, and point the statements about the
/// dumped database at another one.
///
/// Text is never searched as a string: a comment on the database may well contain the words
/// `DATABASE app`, and a role may be called `"TO"`. Tokens know string literals (with `''`, and
/// `E''` with backslash escapes), quoted identifiers (with `""`), dollar quotes, and comments.
enum SQLText {
    struct Token: Equatable {
        enum Kind: Equatable {
            /// A bare word: `value` is lowercased, as the server folds it.
            case word
            /// A double-quoted identifier: `value` is its exact text.
            case quotedIdentifier
            case literal
            /// `;`, `,`, `(`, `=`, ...
            case symbol
        }
        var kind: Kind
        var value: String
        /// Where the token is in the text (UTF-8 offsets).
        var range: Range<Int>

        func isWord(_ word: String) -> Bool { kind == .word && value == word }

        /// The role or object name this token stands for, nil when it is not a name.
        var name: String? { kind == .word || kind == .quotedIdentifier ? value : nil }
    }

    /// The tokens of `text`; nil when a quote, comment or dollar quote is left open.
    static func tokens(_ text: String) -> [Token]? {
        let bytes = Array(text.utf8)
        var tokens: [Token] = []
        var index = 0
        func isWordByte(_ byte: UInt8) -> Bool {
            byte >= 0x80 || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "$")
                || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        while index < bytes.count {
            let byte = bytes[index]
            let start = index
            switch byte {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), 0x0C:
                index += 1
            case UInt8(ascii: "-") where index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "-"):
                while index < bytes.count && bytes[index] != UInt8(ascii: "\n") { index += 1 }
            case UInt8(ascii: "/") where index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "*"):
                // Block comments nest in PostgreSQL.
                var depth = 0
                repeat {
                    if index + 1 < bytes.count && bytes[index] == UInt8(ascii: "/")
                        && bytes[index + 1] == UInt8(ascii: "*")
                    {
                        depth += 1
                        index += 2
                    } else if index + 1 < bytes.count && bytes[index] == UInt8(ascii: "*")
                        && bytes[index + 1] == UInt8(ascii: "/")
                    {
                        depth -= 1
                        index += 2
                    } else {
                        index += 1
                    }
                } while depth > 0 && index < bytes.count
                if depth > 0 { return nil }
            case UInt8(ascii: "'"):
                guard let end = literalEnd(bytes, from: index, backslashEscapes: false) else { return nil }
                index = end
                tokens.append(Token(kind: .literal, value: "", range: start..<index))
            case UInt8(ascii: "\""):
                var value: [UInt8] = []
                index += 1
                while true {
                    guard index < bytes.count else { return nil }
                    if bytes[index] == UInt8(ascii: "\"") {
                        if index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "\"") {
                            value.append(UInt8(ascii: "\""))
                            index += 2
                            continue
                        }
                        index += 1
                        break
                    }
                    value.append(bytes[index])
                    index += 1
                }
                tokens.append(
                    Token(kind: .quotedIdentifier, value: String(decoding: value, as: UTF8.self), range: start..<index))
            case UInt8(ascii: "$") where dollarTag(bytes, at: index) != nil:
                let tag = dollarTag(bytes, at: index)!
                index += tag.count
                while true {
                    guard index < bytes.count else { return nil }
                    if bytes[index] == UInt8(ascii: "$"), bytes[index...].starts(with: tag) {
                        index += tag.count
                        break
                    }
                    index += 1
                }
                tokens.append(Token(kind: .literal, value: "", range: start..<index))
            default:
                if isWordByte(byte) {
                    while index < bytes.count && isWordByte(bytes[index]) { index += 1 }
                    // E'...' (and e'...'): a literal with backslash escapes.
                    if index == start + 1, byte | 0x20 == UInt8(ascii: "e"), index < bytes.count,
                        bytes[index] == UInt8(ascii: "'")
                    {
                        guard let end = literalEnd(bytes, from: index, backslashEscapes: true) else { return nil }
                        index = end
                        tokens.append(Token(kind: .literal, value: "", range: start..<index))
                        continue
                    }
                    let word = String(decoding: bytes[start..<index], as: UTF8.self)
                    tokens.append(Token(kind: .word, value: word.lowercased(), range: start..<index))
                } else {
                    index += 1
                    tokens.append(
                        Token(kind: .symbol, value: String(decoding: [byte], as: UTF8.self), range: start..<index))
                }
            }
        }
        return tokens
    }

    /// The index just past a string literal that starts with the quote at `start`.
    private static func literalEnd(_ bytes: [UInt8], from start: Int, backslashEscapes: Bool) -> Int? {
        var index = start + 1
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "\\") where backslashEscapes:
                index += 2
            case UInt8(ascii: "'"):
                if index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "'") {
                    index += 2
                } else {
                    return index + 1
                }
            default:
                index += 1
            }
        }
        return nil
    }

    /// `$tag$` (or `$$`) starting at `index`, or nil when the `$` starts no dollar quote.
    private static func dollarTag(_ bytes: [UInt8], at index: Int) -> [UInt8]? {
        var end = index + 1
        while end < bytes.count, bytes[end] != UInt8(ascii: "$") {
            let byte = bytes[end]
            let letter = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20) || byte == UInt8(ascii: "_")
            let digit = (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
            guard letter || byte >= 0x80 || (digit && end > index + 1) else { return nil }
            end += 1
        }
        guard end < bytes.count else { return nil }
        return Array(bytes[index...end])
    }

    /// The statements of `text`, each without its `;`, trimmed; nil when `text` does not lex.
    static func statements(_ text: String) -> [String]? {
        guard let tokens = tokens(text) else { return nil }
        let bytes = Array(text.utf8)
        var result: [String] = []
        var start: Int?
        var end = 0
        for token in tokens {
            if token.kind == .symbol && token.value == ";" {
                if let from = start { result.append(String(decoding: bytes[from..<end], as: UTF8.self)) }
                start = nil
                continue
            }
            if start == nil { start = token.range.lowerBound }
            end = token.range.upperBound
        }
        if let from = start { result.append(String(decoding: bytes[from..<end], as: UTF8.self)) }
        return result
    }

    /// Every role named by the grants and settings in `text` (GRANT ... TO, REVOKE ... FROM,
    /// GRANTED BY, ALTER DEFAULT PRIVILEGES FOR ROLE, SET SESSION AUTHORIZATION, ALTER ROLE ... IN
    /// DATABASE), without PUBLIC and the CURRENT_USER-like keywords.
    static func rolesNamed(inGrants text: String) -> Set<String> {
        var roles = Set<String>()
        for statement in statements(text) ?? [] {
            guard let tokens = tokens(statement), let first = tokens.first, first.kind == .word else { continue }
            var index = 0
            func roleList(from start: Int, until stops: Set<String>) {
                var position = start
                while position < tokens.count {
                    let token = tokens[position]
                    if token.kind == .word && stops.contains(token.value) { break }
                    if token.isWord("group") {
                        position += 1
                        continue
                    }
                    if let name = token.name, !(token.kind == .word && pseudoRoles.contains(name)) {
                        roles.insert(name)
                    }
                    position += 1
                }
            }
            switch first.value {
            case "grant", "revoke":
                index = 0
            case "alter" where tokens.count > 4 && tokens[1].isWord("default") && tokens[2].isWord("privileges"):
                // ALTER DEFAULT PRIVILEGES FOR ROLE r [IN SCHEMA s] GRANT|REVOKE ...
                var position = 3
                if tokens[position].isWord("for") { position += 2 }  // FOR ROLE|USER
                if position < tokens.count, let name = tokens[position].name { roles.insert(name) }
                guard let verb = tokens.firstIndex(where: { $0.isWord("grant") || $0.isWord("revoke") }) else {
                    continue
                }
                index = verb
            case "alter" where tokens.count > 2 && (tokens[1].isWord("role") || tokens[1].isWord("user")):
                if let name = tokens[2].name, !(tokens[2].kind == .word && pseudoRoles.contains(name)) {
                    roles.insert(name)
                }
                continue
            case "set" where tokens.count > 3 && tokens[1].isWord("session") && tokens[2].isWord("authorization"):
                if let name = tokens[3].name, tokens[3].kind == .quotedIdentifier || name != "default" {
                    roles.insert(name)
                }
                continue
            default:
                continue
            }
            let isGrant = tokens[index].isWord("grant")
            let keyword = isGrant ? "to" : "from"
            guard let listStart = tokens[index...].firstIndex(where: { $0.isWord(keyword) }) else { continue }
            roleList(from: listStart + 1, until: ["with", "granted", "cascade", "restrict"])
            if let grantedBy = tokens.firstIndex(where: { $0.isWord("granted") }), grantedBy + 2 < tokens.count,
                tokens[grantedBy + 1].isWord("by"), let name = tokens[grantedBy + 2].name,
                !(tokens[grantedBy + 2].kind == .word && pseudoRoles.contains(name))
            {
                roles.insert(name)
            }
        }
        return roles
    }

    /// Words that stand for a role without naming one.
    static let pseudoRoles: Set<String> = ["public", "current_user", "session_user", "current_role"]

    /// `statement` with the first `DATABASE <name>` in it (outside literals and comments) pointed
    /// at `newName`: how the statements pg_dump wrote about the dumped database apply to the one
    /// being restored. nil when no such name is in the statement.
    static func renamingDatabase(in statement: String, from oldName: String, to quotedNewName: String) -> String? {
        guard let tokens = tokens(statement) else { return nil }
        for (index, token) in tokens.enumerated().dropLast() where token.isWord("database") {
            let name = tokens[index + 1]
            guard name.name == (name.kind == .word ? oldName.lowercased() : oldName),
                name.kind == .quotedIdentifier || oldName == oldName.lowercased()
            else { continue }
            var bytes = Array(statement.utf8)
            bytes.replaceSubrange(name.range, with: Array(quotedNewName.utf8))
            return String(decoding: bytes, as: UTF8.self)
        }
        return nil
    }
}
