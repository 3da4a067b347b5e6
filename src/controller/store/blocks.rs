//! The used count per block of a pod's dense range (see `allocate::Dense`), kept in the same
//! transaction as every allocation and release. The counts only steer the choice: the unique
//! indexes stay the duplicate check, and a count found wrong (a database from before the counts,
//! a row removed by hand) is corrected when its block is read.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::columns::{
    address_key, int, opt_int, opt_text, prefix_from_columns, prefixes_of, revision,
};
use super::{Arg, Backend, PodRow, PodWrite, Step, Store, StoreError, Tx, pod_from_row};
use crate::controller::allocate::{Dense, DenseKind};

/// The step that counts one more (`+1`) or one fewer (`-1`) used value in `block`.
pub(super) fn count_step(
    backend: Backend,
    pod: &str,
    scope: &'static str,
    block: u64,
    delta: i8,
) -> Step<'static> {
    let sql = match (delta > 0, backend) {
        (true, Backend::Mysql) => {
            "INSERT INTO alloc_blocks (pod, scope, block, used) VALUES (?, ?, ?, 1) \
             ON DUPLICATE KEY UPDATE used = used + 1"
        }
        (true, _) => {
            "INSERT INTO alloc_blocks (pod, scope, block, used) VALUES (?, ?, ?, 1) \
             ON CONFLICT (pod, scope, block) DO UPDATE SET used = alloc_blocks.used + 1"
        }
        (false, _) => {
            "UPDATE alloc_blocks SET used = used - 1 \
             WHERE pod = ? AND scope = ? AND block = ? AND used > 0"
        }
    };
    Step {
        sql,
        args: vec![
            Arg::Text(Some(pod.to_string())),
            Arg::Text(Some(scope.to_string())),
            Arg::Int(Some(i64::try_from(block).unwrap_or(i64::MAX))),
        ],
        fail: Box::new(|e| StoreError::from_sqlx(e, "count the allocation block")),
    }
}

/// The count steps of handing out (`delta` 1) or taking back (-1) an instance's /64 and
/// addresses in `pod`.
pub(super) fn count_steps(
    backend: Backend,
    pod: &PodRow,
    prefix: Option<Ipv6Net>,
    addresses: &[Ipv6Addr],
    delta: i8,
) -> Vec<Step<'static>> {
    let Some(dense) = Dense::for_pod(pod.prefix.net(), pod.instance_prefix_length, &pod.exclude)
    else {
        return Vec::new();
    };
    let blocks: Vec<u64> = match dense.kind() {
        DenseKind::Prefixes => prefix.and_then(|p| dense.block_of(p)).into_iter().collect(),
        DenseKind::Addresses => addresses
            .iter()
            .filter_map(|a| dense.block_of_address(*a))
            .collect(),
    };
    blocks
        .into_iter()
        .map(|b| count_step(backend, &pod.name, dense.scope(), b, delta))
        .collect()
}

impl Store {
    /// For a write that locked `pod`: the count steps that take back `instance`'s /64 and
    /// addresses (only those in `only`, when given).
    pub(super) async fn release_steps(
        &self,
        tx: &mut Tx,
        pod: &str,
        instance: &str,
        only: Option<Ipv6Addr>,
    ) -> Result<Vec<Step<'static>>, StoreError> {
        let sql = self.sql(
            "SELECT p.prefix, p.instance_prefix_length, p.exclude, p.revision, i.prefix, \
             i.prefix_len FROM pods p JOIN instances i ON i.pod = p.name \
             WHERE p.name = ? AND i.name = ?",
        );
        let Some(row) = sqlx::query(&sql)
            .bind(pod)
            .bind(instance)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read the pod"))?
        else {
            return Ok(Vec::new());
        };
        let pod_row = pod_from_row(pod, &row)?;
        let prefix = match only {
            Some(_) => None,
            None => prefix_from_columns(opt_text(&row, 4)?, opt_int(&row, 5)?)?,
        };
        let addresses = match only {
            Some(address) => vec![address],
            None => {
                let sql = self.sql("SELECT address FROM addresses WHERE pod = ? AND instance = ?");
                sqlx::query(&sql)
                    .bind(pod)
                    .bind(instance)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, "read addresses"))?
                    .iter()
                    .map(|r| super::columns::address_from_key(&super::columns::text(r, 0)?))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(count_steps(self.backend, &pod_row, prefix, &addresses, -1))
    }
}

impl PodWrite<'_> {
    /// The used counts of the pod's blocks of `scope` that have one: `(block, used)`.
    pub async fn block_counts(&mut self, scope: &str) -> Result<Vec<(u64, u64)>, StoreError> {
        let sql = self
            .store
            .sql("SELECT block, used FROM alloc_blocks WHERE pod = ? AND scope = ?");
        sqlx::query(&sql)
            .bind(self.pod.name.as_str())
            .bind(scope)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read the allocation blocks"))?
            .iter()
            .map(|r| {
                Ok((
                    u64::try_from(int(r, 0)?).unwrap_or(0),
                    revision(int(r, 1)?)?,
                ))
            })
            .collect()
    }

    /// Correct the used count of a block (it disagreed with what its block holds).
    pub async fn set_block_count(
        &mut self,
        scope: &str,
        block: u64,
        used: u64,
    ) -> Result<(), StoreError> {
        let block = i64::try_from(block).unwrap_or(i64::MAX);
        let used = i64::try_from(used).unwrap_or(i64::MAX);
        let sql = self
            .store
            .sql("DELETE FROM alloc_blocks WHERE pod = ? AND scope = ? AND block = ?");
        sqlx::query(&sql)
            .bind(self.pod.name.as_str())
            .bind(scope)
            .bind(block)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "correct the allocation block"))?;
        let sql = self
            .store
            .sql("INSERT INTO alloc_blocks (pod, scope, block, used) VALUES (?, ?, ?, ?)");
        sqlx::query(&sql)
            .bind(self.pod.name.as_str())
            .bind(scope)
            .bind(block)
            .bind(used)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "correct the allocation block"))?;
        Ok(())
    }

    /// The pod's instance /64s inside `within`, ascending (an index range scan).
    pub async fn used_prefixes_in(&mut self, within: Ipv6Net) -> Result<Vec<Ipv6Net>, StoreError> {
        let sql = self.store.sql(
            "SELECT prefix, prefix_len FROM instances WHERE pod = ? AND prefix >= ? \
             AND prefix <= ? ORDER BY prefix",
        );
        let rows = sqlx::query(&sql)
            .bind(self.pod.name.as_str())
            .bind(address_key(within.network()))
            .bind(address_key(within.broadcast()))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read used prefixes"))?;
        prefixes_of(&rows)
    }
}
