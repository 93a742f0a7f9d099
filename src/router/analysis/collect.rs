//! One walk over a statement's AST (sqlparser's Visitor) that collects the tables it reads and
//! writes, row locks, and the functions it calls, including inside nested statements
//! (data-modifying CTEs, PREPARE/EXPLAIN bodies).

use std::convert::Infallible;
use std::ops::ControlFlow;

use sqlparser::ast::{
    CopySource, Expr, FromTable, ObjectName, ObjectType, Query, Select, SetExpr, Statement,
    TableFactor, TableObject, Visit, Visitor,
};

use super::functions;
use super::{normalize_ident, PinReason, TableRef};

/// What a walk found. `pin` is only the pin a function call causes (advisory locks, and
/// SELECT INTO TEMP); statement-level pins are added by `classify`.
#[derive(Debug, Default)]
pub(super) struct Collected {
    pub reads: Vec<TableRef>,
    pub writes: Vec<TableRef>,
    pub locking: bool,
    pub writing_function: bool,
    pub volatile_function: bool,
    pub calls: Vec<String>,
    pub pin: Option<PinReason>,
    /// A `SELECT ... INTO new_table` was seen (a table-creating statement).
    pub select_into: bool,
}

pub(super) fn collect(stmt: &Statement, extra: &[String]) -> Collected {
    let mut c = Collector {
        extra,
        out: Collected::default(),
        targets: Vec::new(),
        not_tables: Vec::new(),
        scopes: Vec::new(),
    };
    let _ = stmt.visit(&mut c);
    c.out
}

struct Collector<'x> {
    extra: &'x [String],
    out: Collected,
    /// Relation names (by address in this AST) that are write targets. sqlparser's visitor
    /// reports every relation alike; comparing addresses tells the target of
    /// `UPDATE t SET a = (SELECT max(a) FROM t)` from the `t` it also reads.
    targets: Vec<*const ObjectName>,
    /// Names in FROM that are table functions (`FROM generate_series(1, 3)`), not tables.
    not_tables: Vec<*const ObjectName>,
    /// One entry per query being visited, innermost last: the CTE names it defines.
    scopes: Vec<CteScope>,
}

/// The CTEs of one query's WITH clause. Inside the body of CTE `i` only the earlier CTEs are
/// visible (all of them under RECURSIVE): in `WITH t AS (SELECT * FROM t)` the inner `t` is the
/// real table, which must not be lost from the reads.
struct CteScope {
    names: Vec<String>,
    /// The CTE body queries, by address, to recognise them when the visitor enters them.
    bodies: Vec<*const Query>,
    recursive: bool,
    /// How many of `names` are visible right now.
    visible: usize,
    /// This query is the body of one of the enclosing query's CTEs.
    is_cte_body: bool,
}

fn push_unique(list: &mut Vec<TableRef>, t: TableRef) {
    if !list.contains(&t) {
        list.push(t);
    }
}

fn contains_ptr(list: &[*const ObjectName], name: &ObjectName) -> bool {
    list.iter().any(|p| std::ptr::eq(*p, name))
}

impl Collector<'_> {
    fn add_target(&mut self, name: &ObjectName) {
        push_unique(&mut self.out.writes, TableRef::from_object_name(name));
        self.targets.push(name);
    }

    fn add_target_factor(&mut self, factor: &TableFactor) {
        if let TableFactor::Table { name, .. } = factor {
            self.add_target(name);
        }
    }

    fn add_read(&mut self, t: TableRef) {
        let is_cte = |s: &CteScope| s.names[..s.visible].contains(&t.name);
        if t.schema.is_none() && self.scopes.iter().any(is_cte) {
            return;
        }
        push_unique(&mut self.out.reads, t);
    }

    fn function(&mut self, name: &ObjectName) {
        let Some(last) = name.0.last().and_then(|p| p.as_ident()) else {
            return;
        };
        let lower = last.value.to_lowercase();
        if !self.out.calls.contains(&lower) {
            self.out.calls.push(lower);
        }
        let e = functions::effect(&last.value, self.extra);
        self.out.writing_function |= e.writing;
        self.out.volatile_function |= e.volatile;
        if self.out.pin.is_none() {
            self.out.pin = e.pin;
        }
    }

    /// Records the tables a statement writes, before its parts are visited.
    fn mark_targets(&mut self, stmt: &Statement) {
        match stmt {
            Statement::Insert(i) => {
                if let TableObject::TableName(name) = &i.table {
                    self.add_target(name);
                }
            }
            Statement::Update(u) => self.add_target_factor(&u.table.relation),
            Statement::Delete(d) => {
                for name in &d.tables {
                    self.add_target(name);
                }
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
                for t in from {
                    self.add_target_factor(&t.relation);
                }
            }
            Statement::Merge(m) => self.add_target_factor(&m.table),
            Statement::Truncate(t) => {
                for target in &t.table_names {
                    self.add_target(&target.name);
                }
            }
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                to,
                ..
            } => {
                if *to {
                    // CopySource is not reported as a relation by the visitor.
                    self.add_read(TableRef::from_object_name(table_name));
                } else {
                    self.add_target(table_name);
                }
            }
            Statement::CreateTable(c) => {
                self.add_target(&c.name);
                if let Some(parent) = &c.partition_of {
                    self.add_target(parent);
                }
            }
            Statement::CreateView(v) => self.add_target(&v.name),
            Statement::CreateIndex(i) => self.add_target(&i.table_name),
            Statement::CreateSequence { name, .. } => self.add_target(name),
            Statement::CreateForeignTable(f) => {
                self.add_target(&f.name);
                if let Some(parent) = &f.partition_of {
                    self.add_target(parent);
                }
            }
            Statement::CreateVirtualTable { name, .. } => self.add_target(name),
            Statement::AlterTable(a) => self.add_target(&a.name),
            Statement::AlterIndex { name, .. } => self.add_target(name),
            Statement::AlterView(v) => self.add_target(&v.name),
            Statement::Drop {
                object_type,
                names,
                table,
                ..
            } => {
                if matches!(
                    object_type,
                    ObjectType::Table
                        | ObjectType::ForeignTable
                        | ObjectType::View
                        | ObjectType::MaterializedView
                        | ObjectType::Index
                        | ObjectType::Sequence
                ) {
                    for name in names {
                        self.add_target(name);
                    }
                }
                if let Some(t) = table {
                    self.add_target(t);
                }
            }
            Statement::RefreshMaterializedView(r) => self.add_target(&r.name),
            // Policies, rules and triggers change what reads of (or writes to) the table do.
            Statement::CreatePolicy(p) => self.add_target(&p.table_name),
            Statement::AlterPolicy(p) => self.add_target(&p.table_name),
            Statement::DropPolicy(p) => self.add_target(&p.table_name),
            Statement::CreateRule(r) => self.add_target(&r.table_name),
            Statement::DropRule(r) => self.add_target(&r.table_name),
            Statement::CreateTrigger(t) => self.add_target(&t.table_name),
            Statement::AlterTrigger(t) => self.add_target(&t.table_name),
            Statement::DropTrigger(t) => {
                if let Some(name) = &t.table_name {
                    self.add_target(name);
                }
            }
            Statement::Vacuum(v) => {
                if let Some(name) = &v.table_name {
                    self.add_read(TableRef::from_object_name(name));
                }
            }
            _ => {}
        }
    }

    /// `TABLE t` inside a query body is not reported as a relation by the visitor.
    fn set_expr_tables(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(t) => {
                if let Some(name) = &t.table_name {
                    self.add_read(TableRef {
                        schema: t.schema_name.as_ref().map(normalize_ident),
                        name: normalize_ident(name),
                    });
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr_tables(left);
                self.set_expr_tables(right);
            }
            _ => {}
        }
    }
}

/// `SELECT ... INTO name` targets are plain expressions.
fn table_ref_from_expr(e: &Expr) -> Option<TableRef> {
    match e {
        Expr::Identifier(i) => Some(TableRef {
            schema: None,
            name: normalize_ident(i),
        }),
        Expr::CompoundIdentifier(parts) => {
            let mut it = parts.iter().rev();
            let name = normalize_ident(it.next()?);
            Some(TableRef {
                schema: it.next().map(normalize_ident),
                name,
            })
        }
        _ => None,
    }
}

impl Visitor for Collector<'_> {
    type Break = Infallible;

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<Infallible> {
        self.mark_targets(stmt);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<Infallible> {
        // Entering the body of one of the enclosing query's CTEs narrows what it can see.
        let mut is_cte_body = false;
        if let Some(parent) = self.scopes.last_mut() {
            if let Some(i) = parent.bodies.iter().position(|b| std::ptr::eq(*b, q)) {
                parent.visible = if parent.recursive {
                    parent.names.len()
                } else {
                    i
                };
                is_cte_body = true;
            }
        }
        let (names, bodies, recursive) = match &q.with {
            Some(with) => (
                with.cte_tables
                    .iter()
                    .map(|c| normalize_ident(&c.alias.name))
                    .collect(),
                with.cte_tables
                    .iter()
                    .map(|c| &*c.query as *const Query)
                    .collect(),
                with.recursive,
            ),
            None => (Vec::new(), Vec::new(), false),
        };
        self.scopes.push(CteScope {
            visible: names.len(),
            names,
            bodies,
            recursive,
            is_cte_body,
        });
        self.out.locking |= !q.locks.is_empty();
        self.set_expr_tables(&q.body);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<Infallible> {
        if let Some(done) = self.scopes.pop() {
            if done.is_cte_body {
                if let Some(parent) = self.scopes.last_mut() {
                    parent.visible = parent.names.len();
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<Infallible> {
        if let Some(into) = &s.into {
            self.out.select_into = true;
            if into.temporary && self.out.pin.is_none() {
                self.out.pin = Some(PinReason::TempTable);
            }
            for t in into.targets.iter().filter_map(table_ref_from_expr) {
                push_unique(&mut self.out.writes, t);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<Infallible> {
        match f {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.not_tables.push(name);
                self.function(name);
            }
            TableFactor::Function { name, .. } => self.function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<Infallible> {
        if !contains_ptr(&self.targets, name) && !contains_ptr(&self.not_tables, name) {
            self.add_read(TableRef::from_object_name(name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<Infallible> {
        if let Expr::Function(f) = e {
            self.function(&f.name);
        }
        ControlFlow::Continue(())
    }
}
