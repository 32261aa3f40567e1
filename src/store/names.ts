/**
 * Name keys: the form of a party's name that uniqueness is decided on. Two names a person reads
 * alike get one key: Unicode compatibility forms are folded (NFKC: "ﬁ" is "fi", a full-width "Ａ" is
 * "A") and so is case, in every script ("Ärger" and "äRGER" are one name). The key is computed here,
 * not by the database, so SQLite (whose lower() folds ASCII only) and PostgreSQL (whose lower()
 * depends on the cluster's locale) refuse exactly the same names (docs/api.md, "Names").
 */

/** The key a name is unique by, per kind of party. */
export function nameKey(name: string): string {
  // Lowering can leave a string that is not in NFKC ("İ" lowers to "i" and a combining dot), hence
  // the second normalization.
  return name.normalize('NFKC').toLowerCase().normalize('NFKC');
}
