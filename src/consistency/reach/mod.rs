//! What a write to a table can change besides it, and what a read can see besides the
//! tables it names, learnt from the catalog: partitions and inheritance, foreign-key
//! cascades, triggers, rules, views and policies, and the functions they run. A pure
//! model built from catalog rows (load.rs reads them); where it cannot tell, it says
//! "any table", and the caller falls back to the whole-session rule.

mod body;
pub mod load;

use body::Scan;
use std::collections::{HashMap, HashSet};

/// How a relation's rows reach another relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepKind {
    /// A view's query: reading the view reads the referenced relation, and writing
    /// through the view (auto-updatable) may write it.
    View,
    /// A rule's action (not a view's): a write to the relation may write the referenced one.
    Rule,
    /// A row-level security policy's expression: reading the relation reads the referenced one.
    Policy,
}

/// What a view, rule or policy references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    Relation(u32),
    Function(u32),
}

/// A function outside the system schemas.
#[derive(Debug, Clone)]
pub struct FunctionRow {
    pub oid: u32,
    pub name: String,
    pub language: String,
    pub body: String,
    pub immutable: bool,
}

/// The catalog rows the model is built from (oids as numbers, names lower-cased).
#[derive(Debug, Clone, Default)]
pub struct CatalogRows {
    /// (oid, name, relkind) of the relations outside the system schemas.
    pub relations: Vec<(u32, String, char)>,
    /// (child, parent) of partitions and inheritance.
    pub inherits: Vec<(u32, u32)>,
    /// (referenced, referencing) of foreign keys whose delete or update action writes
    /// (CASCADE, SET NULL, SET DEFAULT).
    pub cascades: Vec<(u32, u32)>,
    /// (relation, function) of user triggers.
    pub triggers: Vec<(u32, u32)>,
    /// (kind, relation, what it references).
    pub deps: Vec<(DepKind, u32, Ref)>,
    pub functions: Vec<FunctionRow>,
    /// The names of PostgreSQL's own functions (pg_catalog).
    pub builtins: Vec<String>,
}

/// What a function may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    Tables(Vec<u32>),
    Any,
}

/// What a read can see besides the tables it names.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadSpan {
    /// These tables too (often none).
    Tables(Vec<String>),
    /// Any table: it calls a function, or reads a view or policy, the proxy cannot follow.
    Any,
}

/// The model of one database's catalog.
#[derive(Debug, Default)]
pub struct Reach {
    /// Relation oids by lower-cased name: schemas ignored, as in the table clock.
    by_name: HashMap<String, Vec<u32>>,
    name_of: HashMap<u32, String>,
    /// pg_class.relkind by oid.
    kind_of: HashMap<u32, char>,
    parents: HashMap<u32, Vec<u32>>,
    children: HashMap<u32, Vec<u32>>,
    cascades: HashMap<u32, Vec<u32>>,
    triggers: HashMap<u32, Vec<u32>>,
    /// Views and rules: what a write to the key may write too.
    writes_through: HashMap<u32, Vec<Ref>>,
    /// Views and policies of other relations that read the key.
    read_by: HashMap<u32, Vec<u32>>,
    /// Relations whose reads may see any table (a view or policy over an opaque function).
    opaque_reads: HashSet<String>,
    /// User function oids by lower-cased name.
    functions: HashMap<String, Vec<u32>>,
    effects: HashMap<u32, Effect>,
    /// PostgreSQL's own function names: a call that is neither one nor a user function
    /// the model knows (one created since, bypassing the proxy) may touch any table.
    builtins: HashSet<String>,
}

/// Names sqlparser reads as function calls that are SQL syntax, not pg_proc functions.
const SYNTAX: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "cast",
    "try_cast",
    "extract",
    "position",
    "substring",
    "trim",
    "overlay",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "session_user",
    "current_role",
    "user",
    "current_catalog",
    "current_schema",
    "exists",
    "any",
    "all",
    "some",
    "array",
    "row",
    "grouping",
    "xmlelement",
    "xmlforest",
    "xmlconcat",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmlexists",
    "collation",
    "normalize",
    "treat",
];

/// What a call names: a user function (its oids), PostgreSQL's own, or unknown.
enum Callee<'a> {
    User(&'a [u32]),
    Builtin,
    Unknown,
}

fn push<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, Vec<V>>, k: K, v: V) {
    m.entry(k).or_default().push(v);
}

impl Reach {
    pub fn build(rows: CatalogRows) -> Reach {
        let mut r = Reach::default();
        for (oid, name, kind) in &rows.relations {
            push(&mut r.by_name, name.to_lowercase(), *oid);
            r.name_of.insert(*oid, name.to_lowercase());
            r.kind_of.insert(*oid, *kind);
        }
        for &(child, parent) in &rows.inherits {
            push(&mut r.parents, child, parent);
            push(&mut r.children, parent, child);
        }
        for &(referenced, referencing) in &rows.cascades {
            push(&mut r.cascades, referenced, referencing);
        }
        for &(rel, f) in &rows.triggers {
            push(&mut r.triggers, rel, f);
        }
        for f in &rows.functions {
            push(&mut r.functions, f.name.to_lowercase(), f.oid);
        }
        r.builtins = rows.builtins.iter().cloned().collect();
        r.builtins.extend(SYNTAX.iter().map(|s| s.to_string()));
        r.effects = r.function_effects(&rows.functions);
        for &(kind, rel, what) in &rows.deps {
            if matches!(kind, DepKind::View | DepKind::Rule) {
                push(&mut r.writes_through, rel, what);
            }
            if matches!(kind, DepKind::View | DepKind::Policy) {
                match r.touched(what) {
                    Effect::Tables(ts) => {
                        for t in ts {
                            push(&mut r.read_by, t, rel);
                        }
                    }
                    Effect::Any => {
                        let name = r.name_of.get(&rel).cloned().unwrap_or_default();
                        r.opaque_reads.insert(name);
                    }
                }
            }
        }
        r
    }

    /// Each function's effect: the relations its body names and those of the functions
    /// it calls, followed through calls (cycles included); Any if one of them is opaque.
    fn function_effects(&self, functions: &[FunctionRow]) -> HashMap<u32, Effect> {
        // Per function: the relations and functions its body names (None: opaque).
        type Named = Option<(Vec<u32>, Vec<u32>)>;
        let mut direct: HashMap<u32, Named> = HashMap::new();
        for f in functions {
            let found = match body::scan(&f.language, &f.body, f.immutable) {
                Scan::Opaque => None,
                Scan::Words(words) => {
                    let pick = |m: &HashMap<String, Vec<u32>>| -> Vec<u32> {
                        words
                            .iter()
                            .filter_map(|w| m.get(w))
                            .flatten()
                            .copied()
                            .collect()
                    };
                    Some((pick(&self.by_name), pick(&self.functions)))
                }
            };
            direct.insert(f.oid, found);
        }
        let mut effects = HashMap::new();
        for f in functions {
            let mut tables = Vec::new();
            let mut seen = HashSet::from([f.oid]);
            let mut todo = vec![f.oid];
            let mut any = false;
            while let Some(g) = todo.pop() {
                match direct.get(&g) {
                    Some(Some((ts, calls))) => {
                        tables.extend(ts);
                        todo.extend(calls.iter().filter(|c| seen.insert(**c)));
                    }
                    _ => {
                        any = true;
                        break;
                    }
                }
            }
            tables.sort_unstable();
            tables.dedup();
            effects.insert(
                f.oid,
                if any {
                    Effect::Any
                } else {
                    Effect::Tables(tables)
                },
            );
        }
        effects
    }

    /// The relations a reference may touch.
    fn touched(&self, what: Ref) -> Effect {
        match what {
            Ref::Relation(oid) => Effect::Tables(vec![oid]),
            Ref::Function(f) => self.effects.get(&f).cloned().unwrap_or(Effect::Any),
        }
    }

    /// Every table (lower-cased name) a commit writing `written` may have changed, or
    /// whose reads may show the change: the written ones, what their triggers, rules,
    /// cascades and partitions write, and the parents, views and policies that show
    /// those. None when that cannot be told (a name the catalog lacks, an opaque trigger).
    /// `calls`: the functions the writing statements called (lower-cased); what the
    /// database's own among them touch counts as written.
    pub fn writes<'a>(
        &self,
        written: impl IntoIterator<Item = &'a str>,
        calls: impl IntoIterator<Item = &'a str>,
    ) -> Option<Vec<String>> {
        let mut todo = Vec::new();
        for name in written {
            todo.extend(self.by_name.get(&name.to_lowercase())?);
        }
        for call in calls {
            let oids = match self.callee(call) {
                Callee::User(oids) => oids,
                Callee::Builtin => continue,
                Callee::Unknown => return None,
            };
            for f in oids {
                match self.effects.get(f)? {
                    Effect::Tables(ts) => todo.extend(ts),
                    Effect::Any => return None,
                }
            }
        }
        let mut changed: HashSet<u32> = todo.iter().copied().collect();
        let mut add = |oid: u32, todo: &mut Vec<u32>| {
            if changed.insert(oid) {
                todo.push(oid);
            }
        };
        while let Some(rel) = todo.pop() {
            let get = |m: &HashMap<u32, Vec<u32>>, k: u32| m.get(&k).cloned().unwrap_or_default();
            for c in get(&self.children, rel)
                .into_iter()
                .chain(get(&self.cascades, rel))
            {
                add(c, &mut todo);
            }
            // Statement triggers of a parent fire for writes through it; counting them for
            // every write to a partition is stricter, never looser.
            let mut fired = Vec::new();
            for a in std::iter::once(rel).chain(self.ancestors(rel)) {
                fired.extend(get(&self.triggers, a).into_iter().map(Ref::Function));
            }
            fired.extend(self.writes_through.get(&rel).into_iter().flatten());
            for what in fired {
                match self.touched(what) {
                    Effect::Tables(ts) => ts.into_iter().for_each(|t| add(t, &mut todo)),
                    Effect::Any => return None,
                }
            }
        }
        // What shows the changed rows: parents (their reads include partitions), and
        // views and policies reading any of these, transitively.
        let mut shown: Vec<u32> = changed.iter().copied().collect();
        let mut all = changed.clone();
        while let Some(rel) = shown.pop() {
            let up = self.parents.get(&rel).into_iter().flatten();
            for &r in up.chain(self.read_by.get(&rel).into_iter().flatten()) {
                if all.insert(r) {
                    shown.push(r);
                }
            }
        }
        let mut names: Vec<String> = all
            .iter()
            .filter_map(|o| self.name_of.get(o).cloned())
            .collect();
        names.sort_unstable();
        names.dedup();
        Some(names)
    }

    fn ancestors(&self, rel: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut todo = vec![rel];
        while let Some(r) = todo.pop() {
            for &p in self.parents.get(&r).into_iter().flatten() {
                if !out.contains(&p) {
                    out.push(p);
                    todo.push(p);
                }
            }
        }
        out
    }

    /// What a read of `reads` calling `calls` (lower-cased function names) may see
    /// besides its tables: the tables of the user functions it calls; Any for one the
    /// proxy cannot follow, or a relation whose view or policy runs one.
    pub fn reads<'a>(
        &self,
        reads: impl IntoIterator<Item = &'a str>,
        calls: impl IntoIterator<Item = &'a str>,
    ) -> ReadSpan {
        if !self.opaque_reads.is_empty()
            && reads
                .into_iter()
                .any(|t| self.opaque_reads.contains(&t.to_lowercase()))
        {
            return ReadSpan::Any;
        }
        let mut tables = Vec::new();
        for call in calls {
            let oids = match self.callee(call) {
                Callee::User(oids) => oids,
                Callee::Builtin => continue,
                Callee::Unknown => return ReadSpan::Any,
            };
            for f in oids {
                match self.effects.get(f) {
                    Some(Effect::Tables(ts)) => {
                        tables.extend(ts.iter().filter_map(|o| self.name_of.get(o).cloned()))
                    }
                    _ => return ReadSpan::Any,
                }
            }
        }
        ReadSpan::Tables(tables)
    }

    fn callee(&self, name: &str) -> Callee<'_> {
        match self.functions.get(name) {
            Some(oids) => Callee::User(oids),
            None if self.builtins.contains(name) => Callee::Builtin,
            None => Callee::Unknown,
        }
    }

    /// Whether some relation's reads may see any table.
    pub fn has_opaque_reads(&self) -> bool {
        !self.opaque_reads.is_empty()
    }

    /// What the relations named `name` (lower-cased; any schema) are: their relkinds,
    /// none when the model has no such relation.
    pub fn kinds_of(&self, name: &str) -> impl Iterator<Item = char> + '_ {
        let oids = self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[]);
        oids.iter().filter_map(|o| self.kind_of.get(o).copied())
    }

    /// Whether `name` is one of PostgreSQL's own functions (and no user function).
    pub fn is_builtin(&self, name: &str) -> bool {
        matches!(self.callee(name), Callee::Builtin)
    }

    /// Whether `name` is a function of the database's own (not PostgreSQL's).
    pub fn is_user_function(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }
}

#[cfg(test)]
mod tests;
