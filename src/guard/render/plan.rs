//! Incremental planning: the applied document and model, updated port by port.
//!
//! [`render`](super::render) builds the whole model from a document, and
//! [`diff_batch`](super::diff_batch) compares two whole models: both walk every element (80,000 at
//! 10,000 ports), tens of milliseconds per change. A [`Planner`] keeps the applied document, its
//! model and the [`Index`] of what the model was built from. Given the next document it compares
//! the two documents port by port (a structural comparison, no rendering), then removes the
//! elements of the ports that went away or changed and adds those of the new or changed ports,
//! recording each change as it goes: the recorded changes are the batch. Group member changes
//! are handled the same way, per member. The marker is kept as a sum of element hashes plus a
//! hash of the (small) structure, so it too is updated per element.
//!
//! This path is taken when the settings and every group's rules are unchanged and no port's key
//! or interface is contested (see [`Index::conflicts`]). New sets of groups get their chains
//! here too, under the names a full render would give them; should a name or mark already be
//! taken (two distinct names that clean to the same identifier, a 32-bit mark collision) the
//! planner does not guess. In every other case it renders the next document in full and diffs
//! the models, as before. Either way the result equals `render(next)`; the property tests check
//! it for random documents and random changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::{
    Batch, Combo, Desired, EGRESS_MAP, Family, GroupChains, INGRESS_MAP, Index, PORT_GROUPS_MAP,
    SetState, Settings, TableDiff, bridge_elements, build, combo_key, combo_mark_value,
    combo_rules, diff_batch, element_hash, element_text, full_batch, ident, mark_text, net_text,
    port_combo, port_keys,
};
use crate::guard::document::{Group, PortsDoc, Remote};

/// The applied document and its model; plans the batch to the next document.
#[derive(Debug, Clone)]
pub struct Planner {
    settings: Settings,
    doc: PortsDoc,
    desired: Desired,
    index: Index,
}

/// How [`Planner::update`] planned a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// Port by port, from the differences between the two documents.
    Ports,
    /// A full render of the next document, diffed with the applied model.
    Render,
}

impl Planner {
    /// The planner for `doc` (rendered in full).
    pub fn new(settings: &Settings, doc: PortsDoc) -> Planner {
        let (desired, index) = build(settings, &doc);
        Planner {
            settings: settings.clone(),
            doc,
            desired,
            index,
        }
    }

    /// The model of the current document.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The one transaction that replaces both tables with the current model.
    pub fn full_batch(&self) -> Batch {
        full_batch(&self.settings, &self.desired)
    }

    /// Make `next` the current document and return the batch that turns the current model into
    /// its model (empty when they are equal), and how it was planned. If the batch then fails to
    /// apply, the planner no longer describes the kernel: drop it and start from a full batch.
    pub fn update(&mut self, settings: &Settings, next: PortsDoc) -> (Batch, PlanKind) {
        if let Some(plan) = self.port_plan(settings, &next) {
            let batch = self.apply_plan(plan, next);
            return (batch, PlanKind::Ports);
        }
        let (desired, index) = build(settings, &next);
        let batch = diff_batch(settings, &self.desired, &desired);
        *self = Planner {
            settings: settings.clone(),
            doc: next,
            desired,
            index,
        };
        (batch, PlanKind::Render)
    }

    /// What changes port by port, or `None` when only a full render gets the next model right.
    /// Changes nothing.
    fn port_plan(&self, settings: &Settings, next: &PortsDoc) -> Option<PortPlan> {
        if *settings != self.settings || self.index.conflicts {
            return None;
        }
        let prev = &self.doc;
        let same_rules = prev.groups.len() == next.groups.len()
            && prev
                .groups
                .iter()
                .zip(&next.groups)
                .all(|((an, a), (bn, b))| an == bn && a.rules == b.rules);
        if !same_rules {
            return None;
        }
        let by_interface: HashMap<&str, usize> = prev
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| (p.interface.as_str(), i))
            .collect();
        let mut kept = vec![false; prev.ports.len()];
        let mut plan = PortPlan::default();
        let mut interfaces: HashSet<&str> = HashSet::with_capacity(next.ports.len());
        for (j, port) in next.ports.iter().enumerate() {
            if !interfaces.insert(port.interface.as_str()) {
                return None;
            }
            match by_interface.get(port.interface.as_str()) {
                Some(&i) if prev.ports[i] == *port => kept[i] = true,
                Some(&i) => {
                    kept[i] = true;
                    plan.removed.push(i);
                    plan.added.push(j);
                }
                None => plan.added.push(j),
            }
        }
        plan.removed.extend(
            kept.iter()
                .enumerate()
                .filter(|(_, k)| !**k)
                .map(|(i, _)| i),
        );

        // Every key of an added port must be free once the removed ports' keys are released,
        // and the added ports must not contest one another's.
        let released: HashSet<Ipv6Net> = plan
            .removed
            .iter()
            .flat_map(|&i| port_keys(settings, &prev.ports[i]))
            .collect();
        let mut fresh = super::Claimed::default();
        for &j in &plan.added {
            let port = &next.ports[j];
            for key in port_keys(settings, port) {
                if self
                    .index
                    .claimed
                    .overlapping(key)
                    .any(|(k, _)| !released.contains(k))
                    || fresh.overlapping(key).next().is_some()
                {
                    return None;
                }
                fresh.claim(key, &port.interface);
            }
        }

        // New sets of groups: the names and marks a full render would give them must be free.
        let marks: HashSet<&str> = self
            .index
            .combos
            .values()
            .map(|c| c.chains.mark.as_str())
            .collect();
        let mut new_marks = HashSet::new();
        let mut new_sets: BTreeMap<String, String> = BTreeMap::new();
        for &j in &plan.added {
            let groups = port_combo(next, &next.ports[j]);
            if self.index.combos.contains_key(&groups) || plan.new_combos.contains_key(&groups) {
                continue;
            }
            let key = combo_key(&groups);
            let id = ident(&key);
            let chains = GroupChains {
                egress: format!("eg_{id}"),
                ingress: format!("in_{id}"),
                mark: mark_text(combo_mark_value(&key)),
            };
            let taken = |name: &str| {
                self.desired.inet.chains.contains_key(name)
                    || plan
                        .new_combos
                        .values()
                        .any(|c| c.egress == name || c.ingress == name)
            };
            if taken(&chains.egress)
                || taken(&chains.ingress)
                || marks.contains(chains.mark.as_str())
                || !new_marks.insert(chains.mark.clone())
            {
                return None;
            }
            for group in groups.iter().filter_map(|g| next.groups.get(g)) {
                for r in &group.rules {
                    if let Remote::Group(g) = &r.remote
                        && !self.index.group_sets.contains_key(g)
                        && !new_sets.contains_key(g)
                    {
                        let name = format!("sg_{}", ident(g));
                        if self.desired.inet.sets.contains_key(&name)
                            || new_sets.values().any(|n| *n == name)
                        {
                            return None;
                        }
                        new_sets.insert(g.clone(), name);
                    }
                }
            }
            plan.new_combos.insert(groups, chains);
        }
        plan.new_sets = new_sets;
        Some(plan)
    }

    /// Carry out `plan`: update the model and the index, and return the recorded changes as a
    /// batch.
    fn apply_plan(&mut self, plan: PortPlan, next: PortsDoc) -> Batch {
        let mut delta = Delta::default();
        let prev = std::mem::replace(&mut self.doc, next);
        let Planner {
            settings,
            doc: next,
            desired,
            index,
        } = self;
        let next: &PortsDoc = next;
        let settings: &Settings = settings;
        let old_marker = desired.marker;

        for &i in &plan.removed {
            let port = &prev.ports[i];
            let keys = port_keys(settings, port);
            for (set, elem) in bridge_elements(&keys, port) {
                desired.take(&mut delta, Family::Bridge, set, &elem);
            }
            for key in keys {
                desired.take(&mut delta, Family::Inet, PORT_GROUPS_MAP, &net_text(key));
                index.claimed.release(key);
            }
            if let Some(combo) = index.combos.get_mut(&port_combo(&prev, port)) {
                combo.ports = combo.ports.saturating_sub(1);
            }
        }

        let mut new_combos = plan.new_combos;
        let mut group_sets = index.group_sets.clone();
        group_sets.extend(plan.new_sets.clone());
        for &j in &plan.added {
            let port = &next.ports[j];
            let groups = port_combo(next, port);
            if let Some(chains) = new_combos.remove(&groups) {
                let (egress_rules, ingress_rules, refs) =
                    combo_rules(settings, next, &groups, &mut |g: &str| {
                        group_sets.get(g).cloned().unwrap_or_default()
                    });
                for (map, key, value) in chains.map_elements() {
                    desired.put(&mut delta, Family::Inet, map, key, Some(value));
                }
                for (name, chain) in chains.with_rules(egress_rules, ingress_rules) {
                    delta.new_chains.push(name.clone());
                    desired.inet.chains.insert(name, chain);
                }
                index
                    .combos
                    .insert(groups.clone(), Combo::unused(chains, refs));
            }
            let keys = port_keys(settings, port);
            for (set, elem) in bridge_elements(&keys, port) {
                desired.put(&mut delta, Family::Bridge, set, elem, None);
            }
            let Some(combo) = index.combos.get_mut(&groups) else {
                continue;
            };
            combo.ports += 1;
            let mark = combo.chains.mark.clone();
            for key in keys {
                index.claimed.claim(key, &port.interface);
                desired.put(
                    &mut delta,
                    Family::Inet,
                    PORT_GROUPS_MAP,
                    net_text(key),
                    Some(mark.clone()),
                );
            }
        }

        // Sets of groups no port uses any more go, with their chains and map elements.
        let unused: Vec<Vec<String>> = index
            .combos
            .iter()
            .filter(|(_, c)| c.ports == 0)
            .map(|(g, _)| g.clone())
            .collect();
        for groups in unused {
            let Some(combo) = index.combos.remove(&groups) else {
                continue;
            };
            for map in [EGRESS_MAP, INGRESS_MAP] {
                desired.take(&mut delta, Family::Inet, map, &combo.chains.mark);
            }
            for name in [combo.chains.egress, combo.chains.ingress] {
                if desired.inet.chains.remove(&name).is_some() {
                    delta.removed_chains.push(name);
                }
            }
        }

        // Member sets: of the groups the remaining rules refer to.
        let referenced: BTreeSet<&String> =
            index.combos.values().flat_map(|c| c.refs.iter()).collect();
        let before = std::mem::take(&mut index.group_sets);
        for (group, set) in &before {
            if !referenced.contains(group) {
                if let Some(state) = desired.inet.sets.remove(set) {
                    desired.elem_sum = desired.elem_sum.wrapping_sub(set_hash(set, &state));
                    delta.removed_sets.push(set.clone());
                }
                continue;
            }
            index.group_sets.insert(group.clone(), set.clone());
            let (old, new) = (prev.groups.get(group), next.groups.get(group));
            let members = |g: Option<&Group>| -> Vec<Ipv6Addr> {
                g.map(|g| g.members.clone()).unwrap_or_default()
            };
            let (old, new) = (members(old), members(new));
            if old == new {
                continue;
            }
            let (old_set, new_set): (HashSet<Ipv6Addr>, HashSet<Ipv6Addr>) =
                (old.iter().copied().collect(), new.iter().copied().collect());
            for gone in old.iter().filter(|a| !new_set.contains(a)) {
                desired.take(&mut delta, Family::Inet, set, &gone.to_string());
            }
            for added in new.iter().filter(|a| !old_set.contains(a)) {
                desired.put(&mut delta, Family::Inet, set, added.to_string(), None);
            }
        }
        for group in referenced {
            if index.group_sets.contains_key(group) {
                continue;
            }
            let Some(set) = plan.new_sets.get(group) else {
                continue;
            };
            let mut state = SetState::set("type ipv6_addr;");
            if let Some(g) = next.groups.get(group) {
                for member in &g.members {
                    state.insert(member.to_string());
                }
            }
            desired.elem_sum = desired.elem_sum.wrapping_add(set_hash(set, &state));
            desired.inet.sets.insert(set.clone(), state);
            index.group_sets.insert(group.clone(), set.clone());
            delta.new_sets.push(set.clone());
        }

        desired.marker = desired.compute_marker();
        delta.batch(settings, desired, old_marker)
    }
}

/// The sum of the element hashes of the inet set `name` (see [`Desired::marker`]).
fn set_hash(name: &str, state: &SetState) -> u64 {
    state.elems.iter().fold(0u64, |sum, (k, v)| {
        sum.wrapping_add(element_hash(Family::Inet, name, k, v.as_deref()))
    })
}

/// What changes from one document to the next, port by port (see [`Planner::port_plan`]).
#[derive(Debug, Default)]
struct PortPlan {
    /// Indexes into the applied document of the ports that go away or change.
    removed: Vec<usize>,
    /// Indexes into the next document of the ports that are new or changed.
    added: Vec<usize>,
    /// Sets of groups not in the model yet, with their chain names and marks.
    new_combos: BTreeMap<Vec<String>, GroupChains>,
    /// Groups whose member set is needed and not in the model yet, with the set's name.
    new_sets: BTreeMap<String, String>,
}

/// The changes to one set's elements, netted: an element deleted and added again with the same
/// value is no change.
#[derive(Debug, Default)]
struct ElemDelta {
    /// Key → value before, for elements that are deleted (or change value).
    gone: BTreeMap<String, Option<String>>,
    /// Key → value after, for elements that are added (or change value).
    added: BTreeMap<String, Option<String>>,
}

/// The changes [`Planner::apply_plan`] made to the model, in the terms of [`Cmd`].
#[derive(Debug, Default)]
struct Delta {
    elems: BTreeMap<(Family, String), ElemDelta>,
    /// Inet chains added (with their rules) and removed.
    new_chains: Vec<String>,
    removed_chains: Vec<String>,
    /// Inet member sets added (with their elements) and removed.
    new_sets: Vec<String>,
    removed_sets: Vec<String>,
}

impl Desired {
    fn table_mut(&mut self, family: Family) -> &mut super::TableState {
        match family {
            Family::Bridge => &mut self.bridge,
            Family::Inet => &mut self.inet,
        }
    }

    /// Set the element `key` of `set` to `value`, keeping the element sum, and record it.
    fn put(
        &mut self,
        delta: &mut Delta,
        family: Family,
        set: &str,
        key: String,
        value: Option<String>,
    ) {
        let Some(state) = self.table_mut(family).sets.get_mut(set) else {
            return;
        };
        let old = state.elems.insert(key.clone(), value.clone());
        if old.as_ref() == Some(&value) {
            return;
        }
        let mut sum = self.elem_sum;
        if let Some(old) = old {
            sum = sum.wrapping_sub(element_hash(family, set, &key, old.as_deref()));
            delta.entry(family, set).remove(key.clone(), old);
        }
        self.elem_sum = sum.wrapping_add(element_hash(family, set, &key, value.as_deref()));
        delta.entry(family, set).add(key, value);
    }

    /// Remove the element `key` of `set`, if present, keeping the element sum, and record it.
    fn take(&mut self, delta: &mut Delta, family: Family, set: &str, key: &str) {
        let Some(state) = self.table_mut(family).sets.get_mut(set) else {
            return;
        };
        let Some(old) = state.elems.remove(key) else {
            return;
        };
        self.elem_sum = self
            .elem_sum
            .wrapping_sub(element_hash(family, set, key, old.as_deref()));
        delta.entry(family, set).remove(key.to_string(), old);
    }
}

impl ElemDelta {
    fn remove(&mut self, key: String, old: Option<String>) {
        if self.added.remove(&key).is_some() {
            // Added earlier in this update: if it existed before, `gone` already has it.
            return;
        }
        self.gone.insert(key, old);
    }

    fn add(&mut self, key: String, value: Option<String>) {
        if self.gone.get(&key) == Some(&value) {
            self.gone.remove(&key);
        } else {
            self.added.insert(key, value);
        }
    }
}

impl Delta {
    fn entry(&mut self, family: Family, set: &str) -> &mut ElemDelta {
        self.elems.entry((family, set.to_string())).or_default()
    }

    /// The commands, in the phases [`diff_batch`] uses (see `TableDiff`), then the markers
    /// swapped.
    fn batch(self, settings: &Settings, desired: &Desired, old_marker: u64) -> Batch {
        let (mut bridge, mut inet) = (TableDiff::default(), TableDiff::default());
        for ((family, set), d) in self.elems {
            // A new set comes with its elements, a removed one goes with them.
            if self.new_sets.contains(&set) || self.removed_sets.contains(&set) {
                continue;
            }
            let map = desired.table(family).sets.get(&set).is_some_and(|s| s.map);
            let gone = d.gone.into_keys().collect();
            let added = d
                .added
                .iter()
                .map(|(k, v)| element_text(k, v.as_ref()))
                .collect();
            let table = match family {
                Family::Bridge => &mut bridge,
                Family::Inet => &mut inet,
            };
            table.elements(family, &set, map, gone, added);
        }
        for name in &self.new_chains {
            if let Some(chain) = desired.inet.chains.get(name) {
                inet.new_chain(Family::Inet, name, chain);
            }
        }
        for name in &self.new_sets {
            if let Some(state) = desired.inet.sets.get(name) {
                inet.new_set(Family::Inet, name, state);
            }
        }
        let removed: Vec<&String> = self.removed_chains.iter().collect();
        inet.removed(
            Family::Inet,
            &removed,
            self.removed_sets.iter().map(|n| (n, false)),
        );
        TableDiff::assemble(
            &settings.table,
            vec![bridge, inet],
            old_marker,
            desired.marker,
        )
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::render::fixtures::*;
    use crate::guard::render::render;

    #[test]
    fn adding_and_removing_a_port_is_planned_port_by_port() {
        let s = settings();
        let mut planner = Planner::new(&s, many_ports(50));
        let mut more = many_ports(50);
        more.ports.push(numbered_port(51, &["web"]));
        let (batch, kind) = planner.update(&s, more.clone());
        assert_eq!(kind, PlanKind::Ports);
        assert_eq!(planner.desired(), &render(&s, &more));
        let text = batch.text();
        assert!(
            text.contains("add element bridge flat6 ports {\n\t\"vnet51\"\n}\n"),
            "{text}"
        );
        assert!(
            text.contains("add element inet flat6 port_groups {\n\t2001:db8:33::10 : 0x"),
            "{text}"
        );
        // 5 bridge elements, the port_groups element, the two marker swaps.
        assert_eq!(batch.element_count(), 6 + 4, "{text}");
        let (back, kind) = planner.update(&s, many_ports(50));
        assert_eq!(kind, PlanKind::Ports);
        assert_eq!(planner.desired(), &render(&s, &many_ports(50)));
        assert!(
            back.text()
                .contains("delete element inet flat6 port_groups {\n\t2001:db8:33::10\n}\n"),
            "{}",
            back.text()
        );
        let (none, _) = planner.update(&s, many_ports(50));
        assert!(none.is_empty(), "{}", none.text());
    }

    #[test]
    fn changed_rules_are_planned_by_a_full_render() {
        let s = settings();
        let mut planner = Planner::new(&s, web());
        let mut next = web();
        if let Some(g) = next.groups.get_mut("web") {
            g.rules.pop();
        }
        let (batch, kind) = planner.update(&s, next.clone());
        assert_eq!(kind, PlanKind::Render);
        assert!(!batch.is_empty());
        assert_eq!(planner.desired(), &render(&s, &next));
    }
}
