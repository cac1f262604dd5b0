//! `juju integrate` and `juju remove-relation`: the endpoints are matched as Juju matches
//! them, and each side that is a local charm runs its relation hooks.

use anyhow::Result;

use super::output::Outcome;
use crate::charms::local::{run_hooks, HookCtx};
use crate::charms::{endpoints_of, provider_data};
use crate::model::{Model, ModelStore, Relation};

fn split_ep(s: &str) -> (&str, Option<&str>) {
    match s.split_once(':') {
        Some((a, e)) => (a, Some(e)),
        None => (s, None),
    }
}

/// An `app[:endpoint]` argument, split.
type End<'a> = (&'a str, Option<&'a str>);

/// The two `app[:endpoint]` arguments of `integrate` and `remove-relation`, each application in
/// the model; or juju's refusal.
fn relation_ends<'a>(
    model: &Model,
    positional: &'a [String],
) -> std::result::Result<(End<'a>, End<'a>), Outcome> {
    let [a, b] = positional else {
        return Err(Outcome::usage("a relation must involve two applications"));
    };
    let ends = (split_ep(a), split_ep(b));
    for app in [ends.0 .0, ends.1 .0] {
        if !model.apps.contains_key(app) {
            return Err(Outcome::error(format!("application \"{app}\" not found")));
        }
    }
    Ok(ends)
}

/// `juju integrate A[:ep] B[:ep]`.
pub fn integrate(store: &ModelStore, model: &Model, positional: &[String]) -> Result<Outcome> {
    let ((a, a_ep), (b, b_ep)) = match relation_ends(model, positional) {
        Ok(ends) => ends,
        Err(refusal) => return Ok(refusal),
    };
    let key = format!("{} {}", positional[0], positional[1]);
    let (ea, eb) = (endpoints_of(model, a), endpoints_of(model, b));
    let mut found = vec![];
    for (na, pa) in &ea {
        for (nb, pb) in &eb {
            let roles_fit = matches!(
                (pa.role.as_str(), pb.role.as_str()),
                ("requires", "provides") | ("provides", "requires")
            );
            if roles_fit
                && pa.interface == pb.interface
                && a_ep.is_none_or(|e| e == na)
                && b_ep.is_none_or(|e| e == nb)
            {
                found.push((na.clone(), pa.clone(), nb.clone(), pb.clone()));
            }
        }
    }
    let (na, pa, nb, pb) = match found.len() {
        0 => {
            return Ok(Outcome::error(format!(
                "cannot add relation \"{key}\": no relations found"
            )))
        }
        1 => found.remove(0),
        _ => {
            let list: Vec<String> = found
                .iter()
                .map(|(na, _, nb, _)| format!("\"{a}:{na} {b}:{nb}\""))
                .collect();
            return Ok(Outcome::error(format!(
                "ambiguous relation: \"{key}\" could refer to {}",
                list.join("; ")
            )));
        }
    };
    let full = format!("{a}:{na} {b}:{nb}");
    let exists = model.relations.iter().any(|r| {
        r.ends.iter().any(|e| e.app == a && e.endpoint == na)
            && r.ends.iter().any(|e| e.app == b && e.endpoint == nb)
    });
    if exists {
        return Ok(Outcome::error(format!(
            "cannot add relation \"{full}\": relation {full} already exists"
        )));
    }
    for (app, ep, spec) in [(a, &na, &pa), (b, &nb, &pb)] {
        if let Some(limit) = spec.limit {
            let n = model
                .relations_of(app)
                .filter(|r| r.ends.iter().any(|e| e.app == app && &e.endpoint == ep))
                .count() as u32;
            if n >= limit {
                return Ok(Outcome::error(format!(
                    "cannot add relation \"{full}\": establishing a new relation for {app}:{ep} would exceed its maximum relation limit of {limit}"
                )));
            }
        }
    }
    let interface = pa.interface.clone();
    let (provider, requirer) = if pa.role == "provides" {
        (a, b)
    } else {
        (b, a)
    };
    let data = provider_data(model, provider, &interface);
    let (pa_ep, pb_ep) = (na.clone(), nb.clone());
    let id = store.update(|m| {
        let id = m.add_relation((a, &pa_ep), (b, &pb_ep), &interface);
        if !data.is_empty() {
            let r = m.relations.iter_mut().find(|r| r.id == id).unwrap();
            r.app_data.insert(provider.to_string(), data.clone());
        }
        Ok(id)
    })?;
    let _ = requirer;
    // The relation hooks, on each side that is a local charm.
    for (app, ep, other) in [(a, &na, b), (b, &nb, a)] {
        if model.apps[app].local.is_none() {
            continue;
        }
        let remote: Vec<String> = model.apps[other]
            .units
            .keys()
            .map(|n| format!("{other}/{n}"))
            .collect();
        let mut hooks = vec![(
            format!("{ep}-relation-created"),
            HookCtx {
                relation: Some(id),
                ..Default::default()
            },
        )];
        for u in &remote {
            for h in ["joined", "changed"] {
                hooks.push((
                    format!("{ep}-relation-{h}"),
                    HookCtx {
                        relation: Some(id),
                        remote_unit: Some(u.clone()),
                        ..Default::default()
                    },
                ));
            }
        }
        run_hooks(store, app, &hooks)?;
    }
    Ok(Outcome::default())
}

/// `juju remove-relation A[:ep] B[:ep]`: departed and broken hooks on local charms, then gone.
pub fn remove_relation(
    store: &ModelStore,
    model: &Model,
    positional: &[String],
) -> Result<Outcome> {
    let ((a, a_ep), (b, b_ep)) = match relation_ends(model, positional) {
        Ok(ends) => ends,
        Err(refusal) => return Ok(refusal),
    };
    let end_fits = |r: &Relation, app: &str, ep: Option<&str>| {
        r.ends
            .iter()
            .any(|e| e.app == app && ep.is_none_or(|x| x == e.endpoint))
    };
    let Some(rel) = model
        .relations
        .iter()
        .find(|r| end_fits(r, a, a_ep) && end_fits(r, b, b_ep))
        .cloned()
    else {
        return Ok(Outcome::error(format!(
            "relation \"{} {}\" not found",
            positional[0], positional[1]
        )));
    };
    for (i, end) in rel.ends.iter().enumerate() {
        let other = &rel.ends[1 - i];
        if model.apps[&end.app].local.is_none() {
            continue;
        }
        let mut hooks = vec![];
        for n in model.apps[&other.app].units.keys() {
            hooks.push((
                format!("{}-relation-departed", end.endpoint),
                HookCtx {
                    relation: Some(rel.id),
                    remote_unit: Some(format!("{}/{n}", other.app)),
                    departing: true,
                    ..Default::default()
                },
            ));
        }
        hooks.push((
            format!("{}-relation-broken", end.endpoint),
            HookCtx {
                relation: Some(rel.id),
                broken: true,
                ..Default::default()
            },
        ));
        run_hooks(store, &end.app, &hooks)?;
    }
    store.update(|m| {
        m.relations.retain(|r| r.id != rel.id);
        for app in m.apps.values_mut() {
            if let Some(l) = app.local.as_mut() {
                l.unit_data.remove(&rel.id);
            }
        }
        Ok(())
    })?;
    Ok(Outcome::default())
}
