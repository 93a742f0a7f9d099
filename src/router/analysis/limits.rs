//! Bounds on how deeply nested SQL may be before it reaches sqlparser. Its parser and its AST
//! visitor recurse, and a stack overflow aborts the whole proxy, not just one client.

use super::lexer::{Lexer, TokenKind};

/// sqlparser's recursion limit (nested subqueries, CASE, function calls...). 50 is its
/// default and fits a 2 MiB stack (tokio's default) in release builds; debug builds use
/// frames several times larger, where 16 still fits (measured: a 2 MiB debug thread overflows
/// at about 10 nested derived tables under the default limit).
pub(super) const PARSER_RECURSION_LIMIT: usize = if cfg!(debug_assertions) { 16 } else { 50 };

/// Bound on [`expression_depth`]. `a OR b OR ...` is parsed in a loop into a left-deep tree, so
/// the recursion limit does not apply to it, but walking it recurses once per operator.
/// Measured on a 2 MiB stack: release overflows near 50 000 levels, debug near 1 000.
pub(super) const MAX_EXPRESSION_DEPTH: usize = if cfg!(debug_assertions) { 100 } else { 3000 };

/// An upper bound on the depth of the expression trees in `sql`: per bracket group, the most
/// operators in one comma-separated item, plus the deepest group nested in it.
pub(super) fn expression_depth(sql: &str) -> usize {
    struct Group {
        ops: usize,
        max_item: usize,
        max_child: usize,
    }
    impl Group {
        fn depth(&self) -> usize {
            self.ops.max(self.max_item) + self.max_child
        }
    }
    let new = || Group {
        ops: 0,
        max_item: 0,
        max_child: 0,
    };
    let bytes = sql.as_bytes();
    let mut stack = vec![new()];
    for tok in Lexer::new(sql) {
        let text = &bytes[tok.start..tok.end];
        let top = stack.len() - 1;
        match tok.kind {
            TokenKind::Operator => stack[top].ops += 1,
            TokenKind::Word if is_operator_word(text) => stack[top].ops += 1,
            TokenKind::Punct => match text[0] {
                b'(' | b'[' => {
                    // A subscript chain `a[1][2]` nests like an operator chain.
                    stack[top].ops += usize::from(text[0] == b'[');
                    stack.push(new());
                }
                b')' | b']' if stack.len() > 1 => {
                    let done = stack.pop().map_or(0, |g| g.depth());
                    let parent = stack.len() - 1;
                    stack[parent].max_child = stack[parent].max_child.max(done);
                }
                b',' | b';' => {
                    let g = &mut stack[top];
                    g.max_item = g.max_item.max(g.ops);
                    g.ops = 0;
                }
                b':' => stack[top].ops += 1,
                _ => {}
            },
            _ => {}
        }
    }
    // Unclosed groups count as closed at the end.
    while stack.len() > 1 {
        let done = stack.pop().map_or(0, |g| g.depth());
        let parent = stack.len() - 1;
        stack[parent].max_child = stack[parent].max_child.max(done);
    }
    stack[0].depth()
}

/// Keywords that combine two operands (or set-operation arms) into a new node.
fn is_operator_word(w: &[u8]) -> bool {
    const WORDS: &[&[u8]] = &[
        b"and",
        b"or",
        b"not",
        b"is",
        b"like",
        b"ilike",
        b"similar",
        b"between",
        b"in",
        b"at",
        b"collate",
        b"union",
        b"intersect",
        b"except",
        b"overlaps",
    ];
    WORDS.iter().any(|k| k.eq_ignore_ascii_case(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_estimates() {
        assert_eq!(expression_depth("SELECT 1"), 0);
        assert_eq!(expression_depth("SELECT a + b + c FROM t"), 2);
        // Commas separate siblings: an IN list is flat (`*` counts: it is only an upper bound).
        assert_eq!(
            expression_depth("SELECT * FROM t WHERE a IN (1, 2, 3, 4, 5)"),
            2
        );
        assert_eq!(expression_depth("SELECT f(a + b, c + d + e)"), 2);
        assert_eq!(expression_depth("SELECT ((a + b) * (c + d + e))"), 3);
        assert_eq!(expression_depth("SELECT a::int"), 2);
        let ors = vec!["(a = 1 AND b = 2)"; 500].join(" OR ");
        assert_eq!(
            expression_depth(&format!("SELECT * FROM t WHERE {ors}")),
            1 + 499 + 3
        );
        assert_eq!(expression_depth("SELECT (((a + b"), 1);
        assert_eq!(expression_depth("SELECT a)) + b"), 1);
    }
}
